"""The commands' way to a server over its HTTP API (``--url``), through ``eventlog.client``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click

from .events import EventFilter

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_URL = "http://127.0.0.1:8000"
URL_HELP = (
    "Work against the eventlog server at this URL, through its HTTP API (the token, if any, is"
    " sent to it), instead of the database of EVENTLOG_DATABASE_URL."
)


def url_option(command: F) -> F:
    """The ``--url`` option (EVENTLOG_URL) of the commands that may work remotely."""
    option = click.option("--url", envvar="EVENTLOG_URL", show_envvar=True, help=URL_HELP)
    return option(command)


def publish(url: str, token: str | None, stream: str, value: Any, type: str) -> str:
    """Publish through the server at ``url``; the stored event as JSON."""
    from .client import Client  # httpx only for --url (``client/__init__.py``)

    with Client(url, token=token) as client:
        return client.publish(stream, value, type=type).to_json()


def events(
    url: str, token: str | None, where: EventFilter, newest_first: bool, limit: int | None
) -> Iterator[str]:
    """The events the server at ``url`` holds that match ``where``, as JSON lines."""
    from .client import Client  # httpx only for --url (``client/__init__.py``)

    with Client(url, token=token) as client:
        found = client.query(
            list(where.streams), types=where.types, after=where.after, before=where.before,
            since=where.since, until=where.until, order="desc" if newest_first else "asc",
            page_size=1000 if limit is None else min(limit, 1000),
        )
        for event in found:
            yield event.to_json()
