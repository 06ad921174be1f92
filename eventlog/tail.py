"""``eventlog tail``: follow streams of a server and print their events as they come."""

from __future__ import annotations

import json
from typing import Any

import click

from .client import ClientError, Event, Reset
from .remote import DEFAULT_URL

STYLES: dict[str, dict[str, Any]] = {"time": {"dim": True}, "stream": {"fg": "cyan"}, "id": {"fg": "yellow"}, "type": {"fg": "green"}}


@click.command()
@click.argument("streams", metavar="STREAM...", nargs=-1, required=True)
@click.option("--url", envvar="EVENTLOG_URL", show_envvar=True, default=DEFAULT_URL, help="The server.")
@click.option("--token", envvar="EVENTLOG_TOKEN", show_envvar=True, help="A token that may read the streams.")
@click.option("--after", type=click.IntRange(0), help="Start after this event id.")
@click.option("--from-start", is_flag=True, help="Start with the oldest event kept.")
@click.option("--last", type=click.IntRange(1), help="Start with the last N matching events.")
@click.option("--type", "types", multiple=True, help="Print only this event type (repeatable).")
@click.option(
    "--position-file", type=click.Path(dir_okay=False),
    help="Keep the id of the last event in this file, and resume after it when it exists"
    " (then it wins over --after, --from-start and --last).",
)
@click.option(
    "--format", "format_", type=click.Choice(["json", "pretty"]), default="json",
    help="JSON lines (the audit API's shape), or one readable line per event (coloured on a terminal).",
)
def tail(
    streams: tuple[str, ...], url: str, token: str | None, after: int | None, from_start: bool,
    last: int | None, types: tuple[str, ...], position_file: str | None, format_: str,
) -> None:
    """Print the events of STREAM... as they are published, from now on unless told where
    to start. Reconnects and resumes by itself; Ctrl-C stops it."""
    if sum((after is not None, from_start, last is not None)) > 1:
        raise click.UsageError("give at most one of --after, --from-start and --last")
    from .client import Client, FilePosition  # httpx only when it runs (``client/__init__.py``)

    position = None if position_file is None else FilePosition(position_file)
    try:
        with Client(url, token=token) as client:
            start = after if not from_start else 0
            if position is not None and position.get(None) is not None:
                start = position.get(None)
            elif last is not None:
                newest = list(client.query(list(streams), types=types, order="desc", page_size=last))
                start = newest[last - 1].id - 1 if len(newest) >= last else 0
            for item in client.subscribe(list(streams), after=start, resets="yield"):
                if isinstance(item, Reset):
                    click.echo(_reset_note(item), err=True)
                elif not types or item.type in types:
                    click.echo(item.to_json() if format_ == "json" else _pretty(item))
                if position is not None:
                    position.set(item.id)
    except KeyboardInterrupt:
        return  # Ctrl-C is how a tail ends
    except ClientError as error:
        raise click.ClickException(str(error)) from None


def _pretty(event: Event) -> str:
    parts = {
        "time": event.time.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
        "stream": event.stream,
        "id": f"#{event.id}",
        "type": event.type,
    }
    styled = [click.style(text, **STYLES[name]) for name, text in parts.items()]
    return " ".join([*styled, json.dumps(event.data, ensure_ascii=False)])


def _reset_note(reset: Reset) -> str:
    return (
        f"reset: events after {reset.requested} cannot all be served (oldest kept:"
        f" {reset.oldest}, head: {reset.head}); going on after {reset.id}"
    )
