"""The ``eventlog`` command: serve, migrate, publish and query from a shell."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import click

from .app import create_app
from .config import ConfigError, Settings, read_config
from .errors import EventlogError
from .query import MAX_LIMIT, parse_audit_query
from .service import EventLog
from .sse import DEFAULT_TYPE
from .store import query as query_events


def _eventlog() -> EventLog:
    """The configured EventLog; a bad setting becomes a one-line error, not a traceback."""
    try:
        app = create_app()
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    extension: EventLog = app.extensions["eventlog"]
    return extension


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """eventlog: a replayable event log with Server-Sent Events.

    Settings come from EVENTLOG_* environment variables (see the README); by default the
    log is the SQLite file ./eventlog.db with in-process notifications.
    """


@main.command()
@click.option("--host", envvar="EVENTLOG_HOST", show_envvar=True, default="127.0.0.1", help="Address to listen on.")
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
def serve(host: str, port: int, workers: int, connections: int, migrate: bool) -> None:
    """Run the HTTP server (gunicorn with gevent workers)."""
    try:
        settings = Settings.from_mapping(read_config())
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    if workers > 1 and not settings.redis_url:
        click.echo(
            "note: without EVENTLOG_REDIS_URL each worker learns of the others' events"
            " by polling, about once a second",
            err=True,
        )
    from .server import check_port_free
    from .server import serve as run_server

    try:
        check_port_free(host, port)
    except OSError as error:
        raise click.ClickException(f"cannot listen on {host}:{port}: {error.strerror}") from None
    if migrate:
        # In a child process, so that this one never imports the database driver: psycopg
        # picks its wait function when imported, and one picked before gevent patches the
        # forked workers would block a whole worker on every query.
        # -P: import eventlog as installed, not a source checkout that happens to be the cwd.
        subprocess.run([sys.executable, "-P", "-m", "eventlog", "db", "upgrade"], check=True)
    run_server(host, port, workers, connections)


@main.group()
def db() -> None:
    """Database schema migrations."""


@db.command()
@click.argument("revision", default="head")
def upgrade(revision: str) -> None:
    """Apply migrations up to REVISION."""
    from .migrate import current
    from .migrate import upgrade as run_upgrade

    engine = _eventlog().engine
    run_upgrade(engine, revision)
    click.echo(f"database at revision {current(engine)}")


@db.command()
def current() -> None:
    """Print the revision the database is at ("none" before the first upgrade)."""
    from .migrate import current as revision

    click.echo(revision(_eventlog().engine) or "none")


@main.command()
@click.argument("stream")
@click.argument("data")
@click.option("--type", "type_", default=DEFAULT_TYPE, help="The event's type.")
def publish(stream: str, data: str, type_: str) -> None:
    """Publish one event to STREAM; DATA is JSON (e.g. '{"id": 7}'). Prints the stored event."""
    try:
        value = json.loads(data)
    except ValueError as error:
        raise click.BadParameter(f"not JSON: {error}", param_hint="DATA") from None
    try:
        stored = _eventlog().publish(stream, value, type=type_)
    except EventlogError as error:
        raise click.ClickException(error.detail) from None
    click.echo(stored.to_json())


@main.command()
@click.option("--stream", multiple=True, help="Only this stream (repeatable).")
@click.option("--type", "types", multiple=True, help="Only this event type (repeatable).")
@click.option("--after", type=int, help="Only ids greater than this.")
@click.option("--before", type=int, help="Only ids less than this.")
@click.option("--since", help="Only events at or after this RFC 3339 time.")
@click.option("--until", help="Only events before this RFC 3339 time.")
@click.option("--limit", type=click.IntRange(1), help="Print at most this many events.  [default: all]")
@click.option("--order", type=click.Choice(["asc", "desc"]), default="asc", help="Oldest or newest first.")
def query(
    stream: tuple[str, ...],
    types: tuple[str, ...],
    after: int | None,
    before: int | None,
    since: str | None,
    until: str | None,
    limit: int | None,
    order: str,
) -> None:
    """Print matching events as JSON lines, following pages to the end."""
    optional = {"after": after, "before": before, "since": since, "until": until}
    params = [
        *(("stream", s) for s in stream),
        *(("type", t) for t in types),
        *((name, str(value)) for name, value in optional.items() if value is not None),
        ("order", order),
    ]
    try:
        audit = parse_audit_query(params)
    except EventlogError as error:
        raise click.ClickException(error.detail) from None
    engine = _eventlog().engine
    where, printed = audit.where, 0
    while limit is None or printed < limit:
        page_size = MAX_LIMIT if limit is None else min(MAX_LIMIT, limit - printed)
        with engine.connect() as conn:
            page = query_events(conn, where, limit=page_size, newest_first=audit.newest_first)
        sys.stdout.writelines(event.to_json() + "\n" for event in page)
        printed += len(page)
        if len(page) < page_size:
            break
        if audit.newest_first:
            where = dataclasses.replace(where, before=page[-1].id)
        else:
            where = dataclasses.replace(where, after=page[-1].id)
