"""conversations.upstream.sse: the Server-Sent Events decoder, fed bytes directly."""

import pytest

from conversations.upstream.sse import ServerSentEvent, SSEDecoder


def decode(*chunks: bytes) -> list[ServerSentEvent]:
    """Every event from ``chunks``, including what EOF flushes."""
    decoder = SSEDecoder()
    events = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.flush()


def datas(*chunks: bytes) -> list[str]:
    return [event.data for event in decode(*chunks)]


def test_one_event():
    assert decode(b"data: hello\n\n") == [ServerSentEvent("hello", "message", "")]


@pytest.mark.parametrize("newline", [b"\n", b"\r", b"\r\n"])
def test_every_line_ending(newline):
    body = b"data: a" + newline + b"data: b" + newline + newline + b"data: c" + newline * 2
    assert datas(body) == ["a\nb", "c"]


def test_mixed_line_endings():
    assert datas(b"data: a\rdata: b\r\ndata: c\n\r\n") == ["a\nb\nc"]


def test_crlf_split_between_chunks_is_one_line_ending():
    # Were the LF a line ending of its own, it would be a blank line dispatching "a" alone.
    assert datas(b"data: a\r", b"\ndata: b\r\n\r\n") == ["a\nb"]
    assert datas(b"data: a\r", b"\n", b"\r", b"\n") == ["a"]


def test_a_trailing_cr_dispatches_at_once():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\r") == [ServerSentEvent("a")]
    assert decoder.feed(b"\ndata: b\r\r") == [ServerSentEvent("b")]  # that LF ended nothing


def test_empty_chunks_change_nothing():
    assert datas(b"", b"data: a\r", b"", b"\n", b"", b"\n", b"") == ["a"]


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c"])
def test_only_cr_and_lf_end_lines(separator):
    text = f'{{"content": "one{separator}two"}}'
    assert datas(f"data: {text}\n\n".encode()) == [text]


def test_multi_line_data_is_joined_with_lf():
    assert datas(b"data: a\ndata:\ndata: b\n\n") == ["a\n\nb"]


def test_comments_are_ignored():
    assert decode(b": ping\n\n:\n\n: OPENROUTER PROCESSING\n\n") == []
    assert datas(b"data: a\n: a comment in the middle\ndata: b\n\n") == ["a\nb"]


def test_a_field_without_colon_has_an_empty_value():
    assert decode(b"data\n\n") == [ServerSentEvent("")]
    assert datas(b"data\ndata\n\n") == ["\n"]
    assert decode(b"event: x\nevent\ndata: a\n\n") == [ServerSentEvent("a", "message")]


def test_one_leading_space_is_stripped():
    assert datas(b"data:a\n\ndata: a\n\ndata:  a\n\ndata:\ta\n\n") == ["a", "a", " a", "\ta"]


def test_unknown_fields_and_field_names_with_spaces_are_ignored():
    assert datas(b"foo: bar\ndata : x\n DATA: y\ndata: z\n\n") == ["z"]


def test_event_without_data_is_not_dispatched():
    assert decode(b"event: ping\n\nid: 7\n\nretry: 10\n\n") == []
    # ...and its event type does not leak into the next one.
    assert decode(b"event: ping\n\ndata: a\n\n") == [ServerSentEvent("a", "message", "")]


def test_event_type_and_id():
    events = decode(b"event: delta\nid: 1\ndata: a\n\ndata: b\n\nid\ndata: c\n\n")
    assert events == [
        ServerSentEvent("a", "delta", "1"),
        ServerSentEvent("b", "message", "1"),  # the last event ID carries over
        ServerSentEvent("c", "message", ""),  # until an empty id resets it
    ]


def test_id_with_nul_is_ignored():
    assert decode(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n")[1].id == "1"


def test_retry():
    decoder = SSEDecoder()
    decoder.feed(b"retry: 3000\n\n")
    assert decoder.retry == 3000
    decoder.feed(b"retry: 1.5\nretry: x\nretry: \xd9\xa3\n\n")  # not all ASCII digits: ignored
    assert decoder.retry == 3000


def test_eof_without_blank_line():
    assert datas(b"data: a\n\ndata: b") == ["a", "b"]
    assert datas(b"data: a\n\ndata: b\n") == ["a", "b"]
    assert datas(b"data: a\n\ndata: b\r") == ["a", "b"]
    assert datas(b"data: a\n\n") == ["a"]
    assert decode() == []
    assert decode(b": just a comment") == []


def test_flush_ends_a_line_that_was_trickling_in():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: ab") == []
    assert decoder.feed(b"c") == []
    assert decoder.flush() == [ServerSentEvent("abc")]
    assert decoder.flush() == []


@pytest.mark.parametrize("text", ["é", "€", "😀", "𝄞", "\u2028"])
def test_utf8_sequence_split_at_every_byte(text):
    body = f"data: a{text}b\n\n".encode()
    start = body.index(text.encode())
    for cut in range(start + 1, start + len(text.encode())):
        assert datas(body[:cut], body[cut:]) == [f"a{text}b"]
    assert datas(*(body[i : i + 1] for i in range(len(body)))) == [f"a{text}b"]


def test_invalid_utf8_is_replaced():
    assert datas(b"data: a\xffb\n\n") == ["a\ufffdb"]
    assert datas(b"data: a\xf0\x9f\n\n") == ["a\ufffd"]  # cut short by the line ending
    assert datas(b"data: a\xf0\x9f") == ["a\ufffd"]  # cut short by EOF
    assert datas(b"id: \xff\ndata: a\n\n") == ["a"]


def test_a_leading_bom_is_skipped_once():
    assert datas(b"\xef\xbb\xbfdata: a\n\n") == ["a"]
    assert datas(b"\xef", b"\xbb", b"\xbfdata: a\n\n") == ["a"]
    assert datas(b"\xef\xbb\xbfdata: a") == ["a"]
    # Only at the start of the stream: later, "\ufeffdata" is an unknown field.
    assert datas(b"data: a\n\n\xef\xbb\xbfdata: b\n\n") == ["a"]


def test_every_split_gives_the_same_events():
    body = (
        b': hi\r\nevent: e\r\nid: 9\r\ndata: {"t": "\xc3\xa9\xe2\x80\xa8\xf0\x9f\x98\x80"}\r\n\r\n'
        b"data: x\rdata\r\rdata: y\n\ndata: tail"
    )
    expected = decode(body)
    assert [event.data for event in expected] == ['{"t": "é\u2028😀"}', "x\n", "y", "tail"]
    for cut in range(len(body) + 1):
        assert decode(body[:cut], body[cut:]) == expected, cut
    for size in (2, 3, 5, 7):
        assert decode(*(body[i : i + size] for i in range(0, len(body), size))) == expected


def test_a_long_line_in_many_pieces():
    value = b"x" * 200_000
    body = b"data: " + value + b"\n\n"
    assert datas(*(body[i : i + 10] for i in range(0, len(body), 10))) == [value.decode()]


def test_a_chunk_of_one_whole_event_keeps_what_came_before():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\n") == [ServerSentEvent("a")]
    assert decoder.feed(b"event: delta\n") == []
    assert decoder.feed(b"data: b\n\n") == [ServerSentEvent("b", "delta")]
    assert decoder.feed(b"data: c\n") == []
    assert decoder.feed(b"data: d\n\n") == [ServerSentEvent("c\nd")]
    assert decoder.feed(b"id: 7\n\n") == []
    assert decoder.feed(b"data: e\n\n") == [ServerSentEvent("e", "message", "7")]
    assert decoder.feed(b"data: f\rdata: g\n\n") == [ServerSentEvent("f\ng", "message", "7")]
    assert decoder.feed(b"data: h") == []
    assert decoder.feed(b"data: i\n\n") == [ServerSentEvent("hdata: i", "message", "7")]
    assert decoder.feed(b"data: j\r") == []
    assert decoder.feed(b"\ndata: k\n\n") == [ServerSentEvent("j\nk", "message", "7")]
