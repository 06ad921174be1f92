"""One subscriber's SSE stream: replay from SQL, then live events from the hub.

``event_stream`` is the single place where replay hands over to live delivery. It holds
the exactly-once, in-order guarantee for its subscriber:

1. register with the hub first: every id after the hub's cursor at that moment (the
   subscription's ``position``) will be pushed into the subscriber's buffer;
2. replay ``id > cursor`` from SQL, page by page, if the resume point is before that
   position (a live-only stream, or one resuming at or after it, asks SQL nothing);
3. drain the buffer, skipping ids at or below the cursor (the replay already sent them).

An overflowed buffer (a slow reader) goes back to step 2 from the same cursor. No database
connection is held while the stream waits or writes: each replay page borrows one briefly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from . import sse
from .hub import Hub, Subscription
from .store import EventFilter, head, query

log = logging.getLogger(__name__)

RESET_TYPE = "reset"
HEARTBEAT = sse.comment("heartbeat").encode()


def event_stream(
    engine: Engine,
    hub: Hub,
    streams: Sequence[str],
    resume_after: int | None,
    *,
    retry_ms: int,
    page_size: int = 1000,
    client_gone: Callable[[], bool] | None = None,
) -> Iterator[bytes]:
    """Yield SSE bytes for events of ``streams`` (all if empty) with id > ``resume_after``.

    Without a resume point the stream starts where the hub is: only new events. A resume
    point beyond the head gets a ``reset`` event naming both, then continues from the head. If the
    database fails, the stream ends (after ``retry:``, if nothing was sent yet): the client
    comes back and resumes, where an error status would make EventSource give up for good.

    ``client_gone``, when the server can tell, says whether the client closed its end; it is
    asked at each heartbeat tick, so a closed idle stream ends at the first tick after the
    close. Otherwise only a failed write ends it, and TCP accepts the first write after a close.
    """
    subscription: Subscription | None = None
    started = False
    try:
        subscription = hub.subscribe(streams)
        # Every id after ``position`` will arrive in the buffer; the database is asked only
        # about what lies between the resume point and that position.
        position = subscription.position
        cursor = position if resume_after is None else resume_after
        newest = position
        if cursor > position:
            with engine.connect() as conn:
                newest = head(conn)
        # The first bytes go out at once, so headers flush; by now the subscriber is
        # registered and positioned, so nothing published from here on can be missed.
        started = True
        yield sse.retry(retry_ms).encode()
        if cursor > newest:
            reset = json.dumps({"requested": cursor, "head": newest})
            yield sse.encode(reset, id=newest, event=RESET_TYPE).encode()
            cursor = newest
        replay = cursor < position
        while True:
            if replay:
                pages = _replay(engine, tuple(streams), cursor, page_size)
                for chunk, cursor in pages:  # the cursor advances page by page
                    yield chunk
            while True:
                frames, overflowed = subscription.take()
                if overflowed:
                    break  # dropped events: replay them from SQL, then carry on live
                if not frames:  # the hub's tick: idle for a heartbeat interval
                    if client_gone is not None and client_gone():
                        return
                    yield HEARTBEAT
                    continue
                fresh = [f for f in frames if f.id > cursor]
                if fresh:
                    cursor = fresh[-1].id
                    yield b"".join(f.wire for f in fresh)
            replay = True
    except SQLAlchemyError as error:
        log.warning("ending a stream: database unavailable (%s)", type(error).__name__)
        if not started:
            yield sse.retry(retry_ms).encode()
    finally:
        if subscription is not None:
            hub.unsubscribe(subscription)


def _replay(
    engine: Engine, streams: tuple[str, ...], cursor: int, page_size: int
) -> Iterator[tuple[bytes, int]]:
    """Pages of frames for events after ``cursor``, each with the cursor it leaves."""
    while True:
        with engine.connect() as conn:
            page = query(conn, EventFilter(streams=streams, after=cursor), limit=page_size)
        if not page:
            return
        cursor = page[-1].id
        yield b"".join(sse.frame(e.id, e.type, e.data).wire for e in page), cursor
        if len(page) < page_size:
            return
