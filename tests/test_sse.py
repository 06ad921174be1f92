"""The SSE wire format on its own: encoding, decoding, and resume-point parsing."""

from __future__ import annotations

import pytest

from eventlog import sse
from eventlog.sse import Decoder, Message


def decode(*chunks: bytes | str) -> list[Message]:
    decoder = Decoder()
    return [m for chunk in chunks for m in decoder.feed(chunk)]


def test_single_line_event_has_id_type_and_data() -> None:
    assert sse.encode('{"a":1}', id=42, event="created") == 'id: 42\nevent: created\ndata: {"a":1}\n\n'


def test_default_type_is_left_out_so_onmessage_receives_it() -> None:
    assert sse.encode("x", id=1, event="message") == "id: 1\ndata: x\n\n"


@pytest.mark.parametrize("text", ["one\ntwo", "one\r\ntwo", "one\rtwo", "a\n\nb\n"])
def test_multi_line_data_round_trips_with_lf(text: str) -> None:
    encoded = sse.encode(text, id=7)
    assert encoded.count("data: ") == len(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    [message] = decode(encoded)
    assert message.data == text.replace("\r\n", "\n").replace("\r", "\n")
    assert message.id == "7"


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\u0085", "\x0c", "\x0b", "\x1c", "é", "😀"])
def test_characters_that_splitlines_breaks_on_stay_inside_data(char: str) -> None:
    text = f'{{"note":"before{char}after"}}'
    encoded = sse.encode(text, id=1)
    assert encoded.count("\n") == 3  # id line, one data line, blank line
    [message] = decode(encoded.encode())
    assert message.data == text


@pytest.mark.parametrize("bad", ["1\n2", "1\r", "a\0b"])
def test_id_with_line_break_or_nul_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        sse.encode("x", id=bad)


def test_type_with_line_break_is_refused() -> None:
    with pytest.raises(ValueError):
        sse.encode("x", event="a\nb")


def test_comment_and_retry_are_not_events() -> None:
    decoder = Decoder()
    assert list(decoder.feed(sse.retry(1500) + sse.comment("heartbeat"))) == []
    assert decoder.retry == 1500


def test_decoder_handles_bytes_split_anywhere() -> None:
    stream = (sse.encode("héllo\u2028wörld", id=1, event="greeting") + sse.encode("2", id=2)).encode()
    for cut in range(1, len(stream)):
        messages = decode(stream[:cut], stream[cut:])
        assert messages == [Message("héllo\u2028wörld", "greeting", "1"), Message("2", "message", "2")]


def test_decoder_crlf_split_between_chunks_is_one_line_break() -> None:
    assert decode("data: a\r", "\n\r\n") == [Message("a")]


def test_decoder_follows_spec_field_rules() -> None:
    messages = decode("data:no space\nid: 5\nunknown: x\n: comment\n\nevent: e\n\ndata:  two spaces\n\n")
    # An event without data is not dispatched; the last id persists; one leading space is dropped.
    assert messages == [Message("no space", "message", "5"), Message(" two spaces", "message", "5")]


@pytest.mark.parametrize(("raw", "expected"), [(None, None), ("", None), ("41", 41), ("0", 0)])
def test_last_event_id_parses(raw: str | None, expected: int | None) -> None:
    assert sse.parse_last_event_id(raw) == expected


@pytest.mark.parametrize(
    "raw", ["-1", "abc", "1.5", "٣", "99999999999999999999", " 41 ", "41\r\n", "\n41", " "]
)
def test_bad_last_event_id_is_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        sse.parse_last_event_id(raw)
