"""``EventLog``: the Flask extension, and the one way in to the log for writes and reads.

    events = EventLog(app)               # or EventLog(), then events.init_app(app)
    events.publish("orders", {"id": 7}, type="created")                  # commits by itself
    events.publish("orders", {"id": 7}, type="created", session=db.session)  # in your transaction

Settings come from the app's ``EVENTLOG_*`` config keys only (``config.py``). The state (the
engine, the notifier, the hub, the writer) is kept per app in ``app.extensions["eventlog"]``,
so one ``EventLog`` may serve several apps (it uses the current app's state, or outside an app
context its only app's); a second ``init_app`` on the same app is refused.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

from flask import Flask, current_app, has_app_context
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, scoped_session

from . import deadline, metrics, migrate
from .auth import TokenAuth
from .budget import ReplayBudget
from .config import Settings, key_of, unknown_names
from .database import Timeouts, backend_of, classify, make_engine
from .errors import ConfigError, IdempotencyConflict, OutOfSpace, QueryTooLong, StatementTimeout
from .events import EventFilter, NewEvent, StoredEvent
from .hub import Hub
from .live_budget import LiveBudget
from .notify import LocalNotifier, Notifier, RedisNotifier
from .replicas import Replica, Replicas, ReplicaState
from .retention import Policy, Pruner, count, prune
from .sse import DEFAULT_TYPE
from .store import (
    Appended,
    Page,
    Publish,
    append_all,
    count_events,
    pages,
    read_page,
)
from .stream import Outlet, event_stream
from .timelines import Timelines
from .transaction import announce_after_commit
from .validation import parse_events
from .writer import Writer

log = logging.getLogger(__name__)
EXTENSION_KEY = "eventlog"
OUT_OF_SPACE_REPORT_SECONDS = 30.0
"""How long readiness reports a write refused for lack of space when no write follows: a
host that a load balancer took out of rotation gets publishes again, which find out anew."""

DatabaseSession = Session | scoped_session[Session] | Connection
"""What ``publish(..., session=...)`` writes in: the caller's open transaction."""


class _State:
    """What one app's event log runs on."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        auth = TokenAuth.from_settings(settings)  # first: a bad key opens nothing
        self.engine = make_engine(settings.database_url, timeouts_of(settings))
        self.replicas = Replicas(
            self.engine,
            [Replica(url, make_engine(url, timeouts_of(settings))) for url in settings.replica_urls],
            max_lag_seconds=settings.replica_max_lag_seconds,
        )
        self.notifier: Notifier = (
            RedisNotifier(settings.redis_url, settings.redis_channel)
            if settings.redis_url
            else LocalNotifier()
        )
        self.hub = Hub(
            self.engine,
            self.notifier,
            poll_seconds=settings.poll_seconds,
            fanout_seconds=settings.fanout_seconds,
            heartbeat_seconds=settings.heartbeat_seconds,
            buffer=settings.subscriber_buffer,
            buffer_bytes=settings.subscriber_buffer_bytes,
            page_bytes=settings.page_bytes,
            live=LiveBudget(settings.live_bytes),
        )
        self.replays = ReplayBudget(settings.replay_bytes)
        self.writer = Writer(self.engine, self._committed, max_bytes=settings.max_request_bytes)
        self.published = 0  # the highest id this process's publishes got
        if backend_of(self.engine).timelines:
            Timelines(
                self.engine,
                seen=lambda: max(self.hub.cursor, self.published),
                on_lost=lambda: self.hub.resync(),
            )
        self.auth = auth
        self.policy = Policy(settings.retain_seconds, settings.retain_events)
        self.pruner = Pruner(self.engine, self.policy, interval=settings.prune_seconds)
        self.pruner.start()
        # When a publish of this process last found the database out of space (monotonic
        # time), until one succeeds: what readiness reports.
        self.out_of_space_at: float | None = None
        self.replicas.start()

    def _committed(self, events: list[StoredEvent]) -> None:
        """The writer's transaction stored ``events``: this process's hub takes them as they
        are (``Hub.offer``), then every process hears the doorbell."""
        self.hub.offer(events)
        self.notifier.announce(events[0].id, events[-1].id)

    def deadline(self) -> contextlib.AbstractContextManager[float | None]:
        """The bound of one request's database work: EVENTLOG_REPLY_TIMEOUT_SECONDS in all,
        on an engine whose driver waits can honour it (``Backend.request_deadline``)."""
        bounded = backend_of(self.engine).request_deadline
        return deadline.within(self.settings.reply_timeout_seconds if bounded else 0)

    def close(self) -> None:
        self.pruner.stop()
        self.replicas.stop()
        self.hub.stop()
        self.notifier.close()
        self.writer.close()
        self.engine.dispose()


def timeouts_of(settings: Settings) -> Timeouts:
    """The database timeouts ``settings`` ask for."""
    return Timeouts(
        connect=settings.connect_timeout_seconds,
        reply=settings.reply_timeout_seconds,
        statement=settings.statement_timeout_seconds,
        lock=settings.lock_timeout_seconds,
        idle_in_transaction=settings.idle_in_transaction_timeout_seconds,
        keepalive=settings.keepalive_seconds,
        pool=settings.pool_timeout_seconds,
    )


class EventLog:
    """The event log of a Flask app: publish (store, then announce), read and stream."""

    def __init__(self, app: Flask | None = None) -> None:
        self._states: weakref.WeakKeyDictionary[Flask, _State] = weakref.WeakKeyDictionary()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Set the log up for ``app``: check its settings and add ``flask eventlog``."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "EventLog is already registered on this app; create it once and import it"
                " where it is needed"
            )
        settings = Settings.from_config(app.config)
        for warning in unknown_names(app.config).values():
            log.warning("%s", warning)
        self._states[app] = _State(settings)
        app.extensions[EXTENSION_KEY] = self
        from .cli import flask_group  # the CLI builds on this module

        app.cli.add_command(flask_group)

    # --- what the log runs on ----------------------------------------------------------

    @property
    def settings(self) -> Settings:
        return self._state().settings

    @property
    def engine(self) -> Engine:
        return self._state().engine

    @property
    def hub(self) -> Hub:
        return self._state().hub

    @property
    def notifier(self) -> Notifier:
        return self._state().notifier

    @property
    def auth(self) -> TokenAuth | None:
        """The token verifier, or None when no key is configured (the API is open)."""
        return self._state().auth

    # --- tokens ----------------------------------------------------------------------------

    def token(
        self,
        *,
        publish: Iterable[str] = (),
        subscribe: Iterable[str] = (),
        ttl: float | timedelta = 3600,
        subject: str | None = None,
    ) -> str:
        """Mint a token with ``EVENTLOG_JWT_SECRET``, e.g. for the logged-in user's browser::

            events.token(subscribe=[f"user.{user.id}.*", "broadcast"], ttl=600, subject=str(user.id))

        ``ttl``: its lifetime, in seconds or as a ``timedelta``. Raises ConfigError without
        a secret (with only a public key, tokens are minted where the private key is).
        """
        auth = self.auth
        if auth is None:
            raise ConfigError(f"set {key_of('jwt_secret')} to mint tokens")
        seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
        return auth.mint(publish=publish, subscribe=subscribe, ttl=seconds, subject=subject)

    # --- writing ---------------------------------------------------------------------------

    def publish(
        self,
        stream: str,
        data: Any,
        *,
        type: str = DEFAULT_TYPE,
        session: DatabaseSession | None = None,
        idempotency_key: str | None = None,
    ) -> StoredEvent:
        """Publish one event, checked exactly as over HTTP; return it with its id.

        Without ``session`` it is committed and announced on return. With one (a SQLAlchemy
        ``Session``, a ``scoped_session`` such as Flask-SQLAlchemy's ``db.session``, or a
        ``Connection``) it is written in that open transaction, its id known at once, and
        announced only after that transaction commits; a rollback stores nothing.
        """
        return self.publish_batch(
            stream, [{"type": type, "data": data}], session=session, idempotency_key=idempotency_key
        )[0]

    def publish_batch(
        self,
        stream: str,
        events: Sequence[Mapping[str, Any]],
        *,
        session: DatabaseSession | None = None,
        idempotency_key: str | None = None,
    ) -> list[StoredEvent]:
        """Publish ``[{"type"?, "data"}, ...]`` all or nothing, under consecutive ids."""
        settings = self.settings
        parsed, _ = parse_events(
            stream,
            list(events),
            max_data_bytes=settings.max_data_bytes,
            max_batch=settings.max_batch,
        )
        return self.append(parsed, session=session, idempotency_key=idempotency_key).events

    def append(
        self,
        events: Sequence[NewEvent],
        *,
        session: DatabaseSession | None = None,
        idempotency_key: str | None = None,
    ) -> Appended:
        """Store already-checked events; raises IdempotencyConflict for a reused key."""
        state = self._state()
        measured = metrics.get()
        try:
            if session is None:
                started = time.perf_counter()
                try:
                    with state.deadline() as at:
                        outcome = state.writer.write(Publish(events, idempotency_key), at)
                finally:
                    measured.publish_duration.observe(time.perf_counter() - started)
                if not outcome.replayed:
                    measured.stored.inc(len(events))
            else:
                outcome = self._append_in(session, events, idempotency_key)
        except Exception as error:
            measured.refused.inc(len(events))
            if classify(state.engine, error) is OutOfSpace:
                state.out_of_space_at = time.monotonic()
            raise
        if outcome.replayed:
            measured.idempotent_replay.inc(len(events))
        else:
            state.out_of_space_at = None  # a write went through: there is space again
        # What a failover must not hand out again (``timelines.py``).
        state.published = max(state.published, outcome.events[-1].id)
        return outcome

    def _append_in(
        self, session: DatabaseSession, events: Sequence[NewEvent], idempotency_key: str | None
    ) -> Appended:
        """Write in the caller's transaction; announce (and count as stored) after its commit."""
        connection, announce_later = announce_after_commit(session, self._state().notifier)
        [outcome] = append_all(connection, [Publish(events, idempotency_key)])
        if isinstance(outcome, IdempotencyConflict):
            raise outcome
        if not outcome.replayed:
            announce_later(outcome.events[0].id, outcome.events[-1].id)
        return outcome

    # --- reading ---------------------------------------------------------------------------

    def page(self, where: EventFilter, *, limit: int, newest_first: bool = False) -> Page:
        """One page of the audit query (at most ``limit`` events, and about
        ``EVENTLOG_PAGE_BYTES`` of data), with what was pruned in its range.

        The page may take ``EVENTLOG_AUDIT_TIMEOUT_SECONDS`` at most, else QueryTooLong;
        SQLite has no statement timeout, so there it runs to the end.
        """
        state = self._state()
        cap = state.settings.audit_timeout_seconds
        backend = backend_of(state.engine)

        def read(conn: Connection) -> Page:
            with backend.cap_statements(conn, cap) if cap else contextlib.nullcontext():
                return read_page(
                    conn,
                    where,
                    limit=limit,
                    newest_first=newest_first,
                    max_bytes=state.settings.page_bytes,
                    with_pruned=True,
                )

        try:
            # A replica that has every event up to ``after`` (``replicas.py``).
            with state.deadline():
                return state.replicas.read(where.after or 0, read)
        except DBAPIError as error:
            if backend.classify(error) is not StatementTimeout:
                raise
            raise QueryTooLong(
                f"the query took longer than {cap:g} s; narrow it with stream, type,"
                " after/before or a shorter since/until"
            ) from None

    def count(self, where: EventFilter) -> int:
        """How many events match ``where`` (one COUNT: an export's progress total)."""
        return self._state().replicas.read(0, lambda conn: count_events(conn, where))

    def events(self, where: EventFilter, *, newest_first: bool = False) -> Iterator[StoredEvent]:
        """Every event matching ``where``, read page by page (for exports and the CLI)."""
        state = self._state()
        for page in pages(
            state.replicas.at_least(0),
            where,
            size=1000,
            newest_first=newest_first,
            max_bytes=state.settings.page_bytes,
        ):
            yield from page.events

    def stream(
        self,
        streams: Sequence[str],
        resume_after: int | None,
        *,
        envelope: bool = False,
        client_gone: Callable[[], bool] | None = None,
        expires_at: float | None = None,
        on_end: Callable[[int, int], None] | None = None,
        outlet: Outlet | None = None,
    ) -> Iterator[bytes]:
        """The SSE bytes of a live stream with replay (see ``stream.event_stream``); with
        ``expires_at`` (a token's expiry, seconds since the epoch) it ends then; with an
        ``outlet`` it parks while it waits."""
        state = self._state()
        return event_stream(
            state.engine,
            state.hub,
            streams,
            resume_after,
            retry_ms=state.settings.retry_ms,
            reads=state.replicas,
            envelope=envelope,
            page_bytes=state.settings.page_bytes,
            client_gone=client_gone,
            expires_at=expires_at,
            on_end=on_end,
            budget=state.replays,
            outlet=outlet,
        )

    def replica_states(self) -> dict[str, ReplicaState]:
        """Each read replica (``host:port/database``) and what its last check found."""
        return self._state().replicas.states()

    def readiness(self) -> dict[str, str]:
        """What answers: ``database`` ("ok", "unreachable", "not migrated" when its schema
        is behind this version, or "out of space" from a publish of this process that the
        database refused for lack of space until one succeeds, for at most
        OUT_OF_SPACE_REPORT_SECONDS) and, when configured, ``redis`` ("ok" or "unreachable")."""
        state = self._state()
        checks: dict[str, str] = {}
        try:
            with state.deadline(), state.engine.connect() as conn:
                checks["database"] = "not migrated" if migrate.behind(conn) else "ok"
        except SQLAlchemyError:
            checks["database"] = "unreachable"
        full_at = state.out_of_space_at
        if checks["database"] == "ok" and full_at is not None:
            if time.monotonic() - full_at < OUT_OF_SPACE_REPORT_SECONDS:
                checks["database"] = "out of space"
        if isinstance(state.notifier, RedisNotifier):
            checks["redis"] = "ok" if state.notifier.ping() else "unreachable"
        return checks

    # --- retention -------------------------------------------------------------------------

    @property
    def retention(self) -> Policy:
        """What the log keeps (``EVENTLOG_RETAIN_SECONDS``, ``EVENTLOG_RETAIN_EVENTS``)."""
        return self._state().policy

    def prune(
        self, *, dry_run: bool = False, on_batch: Callable[[int], object] | None = None
    ) -> int | None:
        """Delete now what retention no longer keeps, and return how many events (with
        ``dry_run``, count them instead); None when another process is pruning."""
        state = self._state()
        if dry_run:
            return count(state.engine, state.policy)
        return prune(state.engine, state.policy, on_batch=on_batch)

    # --- schema ------------------------------------------------------------------------------

    def upgrade(self, revision: str = "head") -> None:
        """Apply eventlog's migrations (version table ``eventlog_alembic_version``)."""
        migrate.upgrade(self.engine, revision)

    def revision(self) -> str | None:
        """The schema revision of eventlog's tables, or None before the first upgrade."""
        return migrate.current(self.engine)

    def close(self) -> None:
        """Stop the hub, send pending announcements, close database connections."""
        self._state().close()

    def _state(self) -> _State:
        """The current app's state; outside an app context, the only app's."""
        if has_app_context():
            state = self._states.get(current_app._get_current_object())  # type: ignore[attr-defined]
            if state is not None:
                return state
        if len(self._states) == 1:
            return next(iter(self._states.values()))
        raise RuntimeError("no app context: use this EventLog inside one of its apps' contexts")


def current_eventlog() -> EventLog:
    """The EventLog of the current app (for eventlog's own views and commands)."""
    extension: EventLog = current_app.extensions[EXTENSION_KEY]
    return extension
