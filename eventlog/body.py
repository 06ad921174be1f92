"""A JSON request body, decoded strictly: what a lenient parser would silently reinterpret
is refused instead, with a message naming the problem.

Pure: no web framework. Refused, where Python's ``json`` would accept:
- anything but UTF-8 (RFC 8259 8.1: JSON between systems is UTF-8), a byte order mark
  included: ``json.loads`` on bytes would guess UTF-16 or UTF-32;
- an object with a key given twice: ``json`` keeps the last one without a word;
- ``NaN``, ``Infinity`` and numbers too large for a float (``1e400``), which ``json`` turns
  into infinity: none of them is a JSON value the log could hand back;
- nesting too deep for the parser (it would raise RecursionError);
- a body shorter than its ``Content-Length`` (the client closed early: a truncated body
  may still parse, as a smaller batch).
"""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import InvalidRequest

_BYTE_ORDER_MARKS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


def decode_json(raw: bytes, *, content_length: int | None = None) -> Any:
    """The JSON value in ``raw``, or InvalidRequest saying what is wrong with it."""
    if content_length is not None and len(raw) < content_length:
        raise InvalidRequest(
            f"the body ended after {len(raw)} of the {content_length} bytes its"
            " Content-Length announced"
        )
    if raw.startswith(_BYTE_ORDER_MARKS):
        raise InvalidRequest("the body starts with a byte order mark; send UTF-8 without one")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidRequest(f"the body is not UTF-8: {error.reason} at byte {error.start}") from None
    try:
        return loads(text)
    except RecursionError:
        raise InvalidRequest("the body is nested too deeply") from None
    except ValueError as error:
        raise InvalidRequest(f"the body is not valid JSON: {error}") from None


def loads(text: str) -> Any:
    """Parse JSON text by the rules above; ValueError (or RecursionError) if it breaks one."""
    return json.loads(
        text, object_pairs_hook=_object, parse_float=_finite, parse_constant=_refuse_constant
    )


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):  # rare: only then look for the repeated key
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"the key {key[:50]!r} appears twice in one object")
            seen.add(key)
    return value


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large")
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")
