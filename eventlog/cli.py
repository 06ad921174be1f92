"""The command line: ``eventlog ...`` for the standalone server, ``flask eventlog ...`` in an
app that embeds eventlog. Both run the same commands on the app's ``EventLog``.

Every failure a user can cause or meet (a bad setting, a missing schema, an unreachable
database) is one line naming the setting or the command to run, with exit status 1.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from flask import Flask
from flask.cli import ScriptInfo
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from tqdm import tqdm

from . import body as strict_json
from . import remote
from .app import create_app
from .auth import Rights, TokenAuth
from .config import (
    COMMAND_KEYS,
    KEYS,
    Settings,
    from_environment,
    is_loopback,
    key_of,
    parse_duration,
    unknown_names,
)
from .client import ClientError
from .database import backend_of
from .errors import ConfigError, EventlogError
from .events import EventFilter
from .extension import EXTENSION_KEY, EventLog, current_eventlog
from .query import parse_audit_query
from .sse import DEFAULT_TYPE
from .tail import tail

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


def in_app(*, needs_schema: bool = True) -> Callable[[F], F]:
    """Run the command inside its app (the standalone one, or ``flask``'s) and turn
    eventlog's and the database's errors into one line each. A command given ``--url``
    works through that server instead, with no app and no database."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("url"):
                try:
                    return command(*args, **kwargs)
                except (EventlogError, ClientError) as error:
                    raise click.ClickException(getattr(error, "detail", None) or str(error)) from None
            info = click.get_current_context().ensure_object(ScriptInfo)
            try:
                app = info.load_app()
                with app.app_context():
                    if needs_schema:
                        _require_schema(current_eventlog())
                    return command(*args, **kwargs)
            except EventlogError as error:
                raise click.ClickException(error.detail) from None
            except SQLAlchemyError as error:
                raise click.ClickException(_database_problem(error)) from None

        return run  # type: ignore[return-value]

    return decorate


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="eventlog", message="%(prog)s %(version)s")
@click.pass_context
def main(ctx: click.Context) -> None:
    """eventlog: a replayable event log with Server-Sent Events.

    Settings come from EVENTLOG_* environment variables (see the README); by default the
    log is the SQLite file ./eventlog.db with in-process notifications.
    """

    if ctx.invoked_subcommand != "serve":  # which says it in its log's format
        for warning in unknown_names(os.environ, KEYS + COMMAND_KEYS).values():
            log.warning("%s", warning)

    def load() -> Flask:
        app = create_app()
        # Close what the command opened: announcements still waiting go out before the exit.
        ctx.call_on_close(app.extensions[EXTENSION_KEY].close)
        return app

    ctx.obj = ScriptInfo(create_app=load, set_debug_flag=False)


@click.group("eventlog", context_settings=CONTEXT)
def flask_group() -> None:
    """eventlog's commands, on this app's EventLog."""


@main.command()
@click.option(
    "--host", envvar="EVENTLOG_HOST", show_envvar=True, default="127.0.0.1",
    help="Address to listen on. On a loopback address only the Host names localhost and 127.0.0.1"
    " are answered, elsewhere any (unless EVENTLOG_ALLOWED_HOSTS is set).",
)
@click.option("--port", envvar="EVENTLOG_PORT", show_envvar=True, default=8000, type=int, help="Port to listen on.")
@click.option(
    "--workers", envvar="EVENTLOG_WORKERS", show_envvar=True, default=1, type=click.IntRange(1),
    help="Worker processes. Without EVENTLOG_REDIS_URL they learn of each other's events by polling.",
)
@click.option(
    "--connections", envvar="EVENTLOG_WORKER_CONNECTIONS", show_envvar=True, default=20000, type=click.IntRange(1),
    help="Concurrent connections each worker accepts.",
)
@click.option(
    "--migrate/--no-migrate", default=True,
    help="Apply database migrations before starting (turn off when a deploy step does it).",
)
@click.option(
    "--insecure", envvar="EVENTLOG_INSECURE", show_envvar=True, is_flag=True,
    help="Serve a non-loopback address without access control (a trusted network behind a gateway).",
)
@click.option(
    "--log-level", envvar="EVENTLOG_LOG_LEVEL", show_envvar=True, default="info",
    type=click.Choice(["debug", "info", "warning", "error"]), help="Least severe log messages written.",
)
@click.option(
    "--access-log", envvar="EVENTLOG_ACCESS_LOG", show_envvar=True, is_flag=True,
    help="Write an access log line per request to stderr (query values left out).",
)
@click.option(
    "--log-format", envvar="EVENTLOG_LOG_FORMAT", show_envvar=True, default="text",
    type=click.Choice(["text", "json"]), help="Log lines as text, or as one JSON object per line.",
)
def serve(
    host: str, port: int, workers: int, connections: int, migrate: bool, insecure: bool,
    log_level: str, access_log: bool, log_format: str,
) -> None:
    """Run the HTTP server (gunicorn with gevent workers).

    gunicorn settings that eventlog does not set itself may be given in GUNICORN_CMD_ARGS.
    """
    try:
        settings = Settings.from_config(from_environment())
        auth = TokenAuth.from_settings(settings)  # reads the key file: a bad one stops us here
    except ConfigError as error:
        raise click.ClickException(error.detail) from None
    notes = [] if auth is not None else [_open_access_warning(host, port, insecure)]
    unknown = unknown_names(os.environ, KEYS + COMMAND_KEYS)
    notes += unknown.values()
    if workers > 1 and not settings.redis_url:
        notes.append(
            "without EVENTLOG_REDIS_URL each worker learns of the others' events"
            " by polling, about once a second"
        )
    from .server import check_port_free
    from .server import serve as run_server

    try:
        check_port_free(host, port)
    except OSError as error:
        raise click.ClickException(f"cannot listen on {host}:{port}: {error.strerror}") from None
    # In a child process, so that this one never imports the database driver: psycopg
    # picks its wait function when imported, and one picked before gevent patches the
    # forked workers would block a whole worker on every query. The child prints its own
    # one-line error. -P: import eventlog as installed, not a checkout that is the cwd.
    step = "upgrade" if migrate else "check"
    # Without the unknown names, which this process warns about itself. Its answer on stdout
    # joins the line that says the server listens, in the log's format.
    environment = {name: value for name, value in os.environ.items() if name not in unknown}
    child = [sys.executable, "-P", "-m", "eventlog", "db", step]
    checked = subprocess.run(child, env=environment, stdout=subprocess.PIPE, text=True)
    if checked.returncode != 0:
        sys.exit(1)
    # Logged once the server listens, so a failed start stays one line.
    run_server(
        host, port, workers, connections, log_level=log_level, access_log=access_log,
        log_format=log_format, notes=notes, database=checked.stdout.strip(),
    )


def _open_access_warning(host: str, port: int, insecure: bool) -> str:
    """What to say about serving without a key; refuse beyond loopback unless ``insecure``."""
    keys = f"{key_of('jwt_secret')} or {key_of('jwt_public_key')}"
    if is_loopback(host):
        return (
            f"note: no {keys}: anyone on this machine may publish to and read every stream"
            f" at {host}:{port}"
        )
    if insecure:
        return f"warning: serving {host}:{port} without access control (--insecure)"
    raise click.ClickException(
        f"refusing to serve {host or 'every address'}:{port} without access control: set {keys},"
        " or pass --insecure (EVENTLOG_INSECURE=1) on a trusted network behind a gateway"
    )


@click.group()
def db() -> None:
    """Database schema migrations (in their own version table, eventlog_alembic_version)."""


@db.command()
@click.argument("revision", default="head")
@in_app(needs_schema=False)
def upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (never back: it does not downgrade)."""
    from .migrate import precedes, revisions

    if revision not in ("head", *revisions()):
        raise click.ClickException(f"there is no revision {revision!r}; this eventlog has {', '.join(revisions())}")
    events = current_eventlog()
    now = events.revision()
    if now is not None and precedes(revision, now):
        raise click.ClickException(
            f"the database is at revision {now}, past {revision}; `eventlog db upgrade` does not downgrade"
        )
    events.upgrade(revision)
    click.echo(f"database at revision {events.revision()}")


@db.command()
@in_app(needs_schema=False)
def current() -> None:
    """Print the revision the database is at ("none" before the first upgrade)."""
    events = current_eventlog()
    missing = _missing_database_file(events)
    if missing is not None and not os.path.isdir(os.path.dirname(os.path.abspath(missing))):
        raise ConfigError(
            f"there is no directory for the database file {missing!r} ({key_of('database_url')})"
        )
    click.echo("none" if missing else events.revision() or "none")


@db.command()
@in_app()
def check() -> None:
    """Exit 0 if the schema is up to date; otherwise say which command to run."""
    click.echo(f"database at revision {current_eventlog().revision()}")


TOKEN_HELP = (
    "Act only as far as this token allows (checked with the configured key), so a script can"
    " do no more than its token grants. Without it the command has every right, as the"
    " database credentials it runs with do. With --url, the token is the server's to check."
)


@click.command()
@click.argument("stream")
@click.argument("data")
@click.option("--type", "type_", default=DEFAULT_TYPE, help="The event's type.")
@click.option("--token", envvar="EVENTLOG_TOKEN", show_envvar=True, help=TOKEN_HELP)
@remote.url_option
@in_app()
def publish(stream: str, data: str, type_: str, token: str | None, url: str | None) -> None:
    """Publish one event to STREAM; DATA is JSON (e.g. '{"id": 7}'). Prints the stored event."""
    try:
        value = strict_json.loads(data)
    except (ValueError, RecursionError) as error:
        raise click.BadParameter(f"not JSON: {error}", param_hint="DATA") from None
    if url:
        click.echo(remote.publish(url, token, stream, value, type_))
        return
    rights = _token_rights(token)
    if rights is not None:
        rights.require_publish(stream)
    click.echo(current_eventlog().publish(stream, value, type=type_).to_json())


def audit_options(command: F) -> F:
    """Give ``command`` the audit query's filters as options (``query``, ``export``): it is
    called with them checked by the HTTP API's parser, as ``where``, ``newest_first`` and
    ``limit``. Put it under ``in_app()``, so a bad value is the same one-line error."""

    @functools.wraps(command)
    def run(
        stream: tuple[str, ...],
        types: tuple[str, ...],
        after: int | None,
        before: int | None,
        since: str | None,
        until: str | None,
        order: str,
        **rest: Any,
    ) -> Any:
        optional = {"after": after, "before": before, "since": since, "until": until}
        params = [
            *(("stream", s) for s in stream),
            *(("type", t) for t in types),
            *((name, str(value)) for name, value in optional.items() if value is not None),
            ("order", order),
        ]
        audit = parse_audit_query(params)
        return command(where=audit.where, newest_first=audit.newest_first, **rest)

    options = [
        click.option(
            "--stream", multiple=True, help="Only this stream, or pattern like 'user.42.*' (repeatable)."
        ),
        click.option("--type", "types", multiple=True, help="Only this event type (repeatable)."),
        click.option("--after", type=int, help="Only ids greater than this."),
        click.option("--before", type=int, help="Only ids less than this."),
        click.option("--since", help="Only events at or after this RFC 3339 time."),
        click.option("--until", help="Only events before this RFC 3339 time."),
        click.option(
            "--limit", type=click.IntRange(1), help="At most this many events.  [default: all]"
        ),
        click.option(
            "--order", type=click.Choice(["asc", "desc"]), default="asc", help="Oldest or newest first."
        ),
    ]
    for option in reversed(options):
        run = option(run)
    return run  # type: ignore[return-value]


@click.command()
@click.option("--token", envvar="EVENTLOG_TOKEN", show_envvar=True, help=TOKEN_HELP)
@remote.url_option
@in_app()
@audit_options
def query(
    where: EventFilter, newest_first: bool, limit: int | None, token: str | None, url: str | None
) -> None:
    """Print matching events as JSON lines, following pages to the end."""
    _write_events(where, newest_first, limit, token, url, progress=False)


@click.command()
@click.option("--token", envvar="EVENTLOG_TOKEN", show_envvar=True, help=TOKEN_HELP)
@remote.url_option
@in_app()
@audit_options
def export(
    where: EventFilter, newest_first: bool, limit: int | None, token: str | None, url: str | None
) -> None:
    """Write matching events as JSON lines to standard output, in the audit query's shape
    (e.g. to archive them before a prune: eventlog export --until 2026-01-01T00:00:00Z >
    old.jsonl). On a terminal, stderr shows a progress bar (its total from a COUNT first)."""
    written = _write_events(where, newest_first, limit, token, url, progress=True)
    click.echo(f"exported {written} events", err=True)


@click.command()
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@in_app()
def prune(dry_run: bool) -> None:
    """Delete now the events that EVENTLOG_RETAIN_SECONDS and EVENTLOG_RETAIN_EVENTS no
    longer keep (servers also do it every EVENTLOG_PRUNE_SECONDS). Prints the count."""
    events = current_eventlog()
    if not events.retention.active:
        click.echo(
            f"nothing to prune: neither {key_of('retain_seconds')} nor {key_of('retain_events')}"
            " is set, so every event is kept"
        )
        return
    if dry_run:
        click.echo(f"{events.prune(dry_run=True)} events would be pruned")
        return
    total = events.prune(dry_run=True) if _on_terminal() else None
    with _progress(total, "pruning") as bar:
        deleted = events.prune(on_batch=bar.update)
    if deleted is None:
        raise click.ClickException("another process is pruning right now; nothing was deleted")
    click.echo(f"pruned {deleted} events")


@click.group()
def token() -> None:
    """Access tokens (JWT) signed with EVENTLOG_JWT_SECRET."""


@token.command("create")
@click.option("--publish", "publish_", multiple=True, help="A stream pattern it may publish to (repeatable).")
@click.option("--subscribe", multiple=True, help="A stream pattern it may read, live or audit (repeatable).")
@click.option("--ttl", default="1h", help="Lifetime: seconds, or a number with s, m, h or d.")
@click.option("--subject", help="The token's sub claim (who it is for).")
@in_app(needs_schema=False)
def create_token(publish_: tuple[str, ...], subscribe: tuple[str, ...], ttl: str, subject: str | None) -> None:
    """Print a new token. Patterns: a stream name, a prefix ending in '*' (user.42.*), or '*'."""
    try:
        seconds = parse_duration(ttl)
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise click.BadParameter("use a positive number of seconds, or e.g. 30m, 1h, 7d", param_hint="--ttl")
    click.echo(current_eventlog().token(publish=publish_, subscribe=subscribe, ttl=seconds, subject=subject))


for group in (main, flask_group):
    group.add_command(db)
    group.add_command(publish)
    group.add_command(query)
    group.add_command(export)
    group.add_command(prune)
    group.add_command(token)
    group.add_command(tail)


def _write_events(
    where: EventFilter, newest_first: bool, limit: int | None, token: str | None,
    url: str | None, *, progress: bool,
) -> int:
    """Write the events matching ``where`` to stdout as JSON lines; return how many.

    With a ``token``, its rights must cover the streams asked for (as over HTTP). With a
    ``url``, the server there answers (and checks the token); the bar then has no total."""
    total: int | None = None
    if url:
        lines = remote.events(url, token, where, newest_first, limit)
    else:
        rights = _token_rights(token)
        if rights is not None:
            rights.require_subscribe(where.streams)
        events = current_eventlog()
        if progress and _on_terminal():
            total = events.count(where)
            total = total if limit is None else min(total, limit)
        lines = (event.to_json() for event in events.events(where, newest_first=newest_first))
    written = 0
    with _progress(total, "exporting", enabled=progress) as bar:
        for line in lines:
            if limit is not None and written >= limit:
                break
            sys.stdout.write(line + "\n")
            written += 1
            bar.update(1)
    return written


def _on_terminal() -> bool:
    return sys.stderr.isatty()


def _progress(total: int | None, what: str, *, enabled: bool = True) -> tqdm[Any]:
    """A progress bar of events on stderr, shown only on a terminal."""
    return tqdm(
        total=total, desc=what, unit=" events", file=sys.stderr, disable=not (enabled and _on_terminal())
    )


def _token_rights(token: str | None) -> Rights | None:
    """The rights of ``--token``, or None (every right) when no token was given."""
    if token is None:
        return None
    auth = current_eventlog().auth
    if auth is None:
        raise ConfigError(
            f"--token needs a key to check it with: set {key_of('jwt_secret')} or {key_of('jwt_public_key')}"
        )
    return auth.verify(token)


def _require_schema(events: EventLog) -> None:
    """Refuse to run on a database without eventlog's schema, and never create one."""
    _require_database_file(events)
    from .migrate import head

    revision, newest = events.revision(), head()
    if revision is None:
        raise ConfigError(
            f"the database in {key_of('database_url')} has no eventlog schema; run `eventlog db upgrade`"
        )
    if revision != newest:
        raise ConfigError(
            f"the database schema is at revision {revision}, this eventlog needs {newest};"
            " run `eventlog db upgrade`"
        )


def _require_database_file(events: EventLog) -> None:
    """A SQLite file that does not exist is an error, not a new empty database."""
    missing = _missing_database_file(events)
    if missing is not None:
        raise ConfigError(
            f"there is no database file {missing!r} ({key_of('database_url')});"
            " run `eventlog db upgrade` to create it"
        )


def _missing_database_file(events: EventLog) -> str | None:
    """The path of a database file that does not exist (connecting would create it)."""
    return backend_of(events.engine).missing_database(make_url(events.settings.database_url))


def _database_problem(error: SQLAlchemyError) -> str:
    """One line on a database failure: its first line, without statement or parameters."""
    cause = getattr(error, "orig", None) or error
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return f"cannot use the database ({key_of('database_url')}): {first}"
