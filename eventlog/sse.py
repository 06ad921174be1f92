"""The Server-Sent Events wire format (WHATWG HTML, "Server-sent events"), both directions.

Pure: no web framework, no I/O. ``encode`` writes one event; ``Decoder`` reads a byte
stream back into events, as a browser's EventSource would.

Deliberate choices:
- Only CR LF, CR and LF end a line, as the spec says. U+2028, U+0085, form feeds and other
  characters that ``str.splitlines`` treats as line ends stay inside the data.
- A data value with line breaks becomes several ``data:`` lines; the reader joins them with LF.
- ``event:`` is left out for type ``message``, the type EventSource's ``onmessage`` receives.
- An id or type containing CR, LF (or, for ids, NUL) is refused: it would break the frame.
- ``retry:`` and comments go without a blank line after them: the spec dispatches nothing
  for such a blank line, but fetch-event-source and httpx-sse hand it to the application as
  an event with empty data (on which ``JSON.parse`` throws).
- A resume point is plain digits or nothing; it is never trimmed or otherwise repaired.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

DEFAULT_TYPE = "message"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def encode(data: str, *, id: int | str | None = None, event: str | None = None) -> str:
    """One event as SSE text, ending with the blank line that dispatches it."""
    head = ""
    if id is not None:
        text = str(id)
        if "\n" in text or "\r" in text or "\0" in text:
            raise ValueError("an SSE id cannot contain CR, LF or NUL")
        head = f"id: {text}\n"
    if event is not None and event != DEFAULT_TYPE:
        if "\n" in event or "\r" in event:
            raise ValueError("an SSE event type cannot contain CR or LF")
        head += f"event: {event}\n"
    return f"{head}{_data_lines(data)}\n"


@dataclass(frozen=True, slots=True)
class Frame:
    """An encoded event: its id (to order and deduplicate by), its bytes on the wire, and
    the moment it was stored (for the delivery lag; turned into a number only when sampled)."""

    id: int
    wire: bytes
    time: datetime


def frame(id: int, event: str, data: str, time: datetime) -> Frame:
    """Encode one stored event once, for however many readers it is sent to.

    The hot path of every replay and fan-out: ``event`` must be a name already checked to
    hold no line break (``events.NAME``), so only ``data`` is looked at."""
    head = f"id: {id}\n" if event == DEFAULT_TYPE else f"id: {id}\nevent: {event}\n"
    return Frame(id, f"{head}{_data_lines(data)}\n".encode(), time)


def _data_lines(data: str) -> str:
    """``data`` as its ``data:`` field lines: one per line of it (the reader joins them)."""
    if "\n" in data or "\r" in data:
        return "".join(f"data: {line}\n" for line in _LINE_BREAK.split(data))
    return f"data: {data}\n"


def comment(text: str = "") -> str:
    """A comment line (ignored by readers; keeps idle connections open through proxies).

    No blank line follows: the spec dispatches nothing for it anyway, but some clients
    hand every blank line to the application as an event with empty data."""
    return "".join(f": {line}\n" for line in _LINE_BREAK.split(text))


def retry(milliseconds: int) -> str:
    """The field that sets how long a reader waits before reconnecting.

    A field line of its own, with no blank line after it (see ``comment``): a reader takes
    the value at once, and the event buffer it leaves untouched."""
    return f"retry: {int(milliseconds)}\n"


def parse_last_event_id(value: str | None) -> int | None:
    """The resume point from ``Last-Event-ID`` or ``?last_event_id=``: a non-negative id.

    Empty or absent means "no resume point". Anything else but ASCII digits, spaces and
    line breaks included, raises ValueError: every id this server sends is plain digits, so
    anything else is not one of its ids, and guessing one from it could skip events.
    """
    if not value:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 19:
        raise ValueError(f"{value[:40]!r} is not an event id (a whole number >= 0)")
    return int(value)


@dataclass(frozen=True, slots=True)
class Message:
    """One event as a reader dispatches it; ``id`` is the reader's last event id then."""

    data: str
    event: str = DEFAULT_TYPE
    id: str = ""


class Decoder:
    """An incremental SSE reader: feed it bytes, get the events they complete.

    Follows the spec's interpretation rules: comments and unknown fields are ignored,
    one leading space after the colon is dropped, ``retry`` is exposed, an event with no
    data is not dispatched, and the last id persists across events.
    """

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._buffer = ""
        self._pending_cr = False
        self._data: list[str] = []
        self._event = ""
        self.last_id = ""
        self.retry: int | None = None

    def feed(self, chunk: bytes | str) -> Iterator[Message]:
        text = self._utf8.decode(chunk) if isinstance(chunk, bytes) else chunk
        if self._pending_cr and text.startswith("\n"):
            text = text[1:]  # the LF of a CR LF split across two chunks
        self._pending_cr = text.endswith("\r")
        lines = _LINE_BREAK.split(self._buffer + text)
        self._buffer = lines.pop()
        for line in lines:
            message = self._line(line)
            if message is not None:
                yield message

    def _line(self, line: str) -> Message | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")  # one space only, as the spec says
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> Message | None:
        data, event = self._data, self._event or DEFAULT_TYPE
        self._data, self._event = [], ""
        if not data:
            return None
        return Message("\n".join(data), event, self.last_id)
