"""fastbody.framing: the one framing decision and its writers, exhaustively, without sockets."""

from __future__ import annotations

import itertools

import pytest

from fastbody import framing
from fastbody.framing import (
    ChunkedWriter,
    CloseWriter,
    Declared,
    Delimit,
    FramingError,
    LengthWriter,
    NoBodyWriter,
    body_allowed,
    chunk_size,
    declared,
    for_message,
    for_response,
    writer_for,
)

METHODS = ["GET", "HEAD", "POST", b"GET", b"HEAD"]
STATUSES = [100, 101, 103, 200, 201, 204, 206, 301, 304, 404, 500]
DECLARED = [Declared(), Declared(length=0), Declared(length=10), Declared(chunked=True)]
KNOWN = [None, 0, 7]


@pytest.mark.parametrize(
    ("method", "status", "declared_", "known", "http11"),
    list(itertools.product(METHODS, STATUSES, DECLARED, KNOWN, [True, False])),
)
def test_for_response_every_combination(
    method: str | bytes, status: int, declared_: Declared, known: int | None, http11: bool
) -> None:
    """Every combination gets exactly one framing, by the rules Go and gunicorn follow."""
    result = for_response(http11=http11, method=method, status=status, declared=declared_, known=known)
    head = method in ("HEAD", b"HEAD")
    if head or status < 200 or status in (204, 304):
        assert result.delimit is Delimit.NONE
        # only a HEAD learns a length it lacks; 1xx/204/304 never get one added
        expect_add = (
            head and declared_ == Declared() and known is not None and status >= 200 and status != 204
        )
        assert result.add_length is expect_add
        assert not result.add_chunked and not result.close
    elif declared_.chunked:
        assert result.delimit is (Delimit.CHUNKED if http11 else Delimit.CLOSE)
        assert not result.add_chunked and not result.add_length
    elif declared_.length is not None:
        assert (result.delimit, result.length, result.add_length) == (Delimit.LENGTH, declared_.length, False)
    elif known is not None:
        assert (result.delimit, result.length, result.add_length) == (Delimit.LENGTH, known, True)
        assert result.header() == (b"content-length", b"%d" % known)
    elif http11:
        assert result.delimit is Delimit.CHUNKED and result.add_chunked
        assert result.header() == (b"transfer-encoding", b"chunked")
    else:
        assert result.delimit is Delimit.CLOSE and result.close and result.header() is None


@pytest.mark.parametrize(("method", "status"), list(itertools.product(METHODS, STATUSES)))
@pytest.mark.parametrize("declared_", DECLARED)
def test_for_message(method: str | bytes, status: int, declared_: Declared) -> None:
    """RFC 9112 6.3: no body for HEAD/1xx/204/304, then chunked, then length, then close."""
    result = for_message(method=method, status=status, declared=declared_)
    if not body_allowed(method, status):
        assert result.delimit is Delimit.NONE
    elif declared_.chunked:
        assert result.delimit is Delimit.CHUNKED
    elif declared_.length is not None:
        assert (result.delimit, result.length) == (Delimit.LENGTH, declared_.length)
    else:
        assert result.delimit is Delimit.CLOSE and result.close


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], Declared()),
        ([(b"Content-Length", b"12")], Declared(length=12)),
        ([("content-length", " 12 ")], Declared(length=12)),
        ([(b"transfer-encoding", b"Chunked")], Declared(chunked=True)),
        ([(b"x-other", b"1"), (b"content-type", b"text/plain")], Declared()),
    ],
)
def test_declared(headers: list[tuple[bytes, bytes]], expected: Declared) -> None:
    assert declared(headers) == expected


def test_declared_reads_an_iterator_once() -> None:
    assert declared(iter([(b"content-length", b"3")])) == Declared(length=3)


@pytest.mark.parametrize(
    "headers",
    [
        [(b"content-length", b"5"), (b"content-length", b"5")],  # duplicates, even equal
        [(b"content-length", b"5, 5")],
        [(b"content-length", b"+5")],
        [(b"content-length", b"-1")],
        [(b"content-length", b"0x10")],
        [(b"content-length", b"1 2")],
        [(b"content-length", b"")],
        [(b"content-length", b"9" * 19)],
        [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")],
        [(b"transfer-encoding", b"chunked"), (b"content-length", b"5")],
        [(b"transfer-encoding", b"gzip, chunked")],
        [(b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked")],
        [(b"transfer-encoding", b"identity")],
    ],
)
def test_declared_refuses_ambiguous_framing(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(FramingError):
        declared(headers)


@pytest.mark.parametrize(
    ("line", "size"),
    [
        (b"0\r\n", 0),
        (b"1a\r\n", 26),
        (b"FF;ext=1\r\n", 255),
        (b"10 \t;a=b\r\n", 16),
        (b"f" * 15 + b"\r\n", 16**15 - 1),
    ],
)
def test_chunk_size(line: bytes, size: int) -> None:
    assert chunk_size(line) == size


@pytest.mark.parametrize(
    "line",
    [
        b"\r\n",
        b"1a\n",
        b"1a",
        b"-1\r\n",
        b"+1\r\n",
        b"0x1\r\n",
        b"g\r\n",
        b" 1\r\n",
        b"f" * 16 + b"\r\n",
        b"5;a\nb\r\n",
        b"5;a\rb\r\n",
        b"5;\0\r\n",
    ],
)
def test_chunk_size_refuses(line: bytes) -> None:
    with pytest.raises(FramingError):
        chunk_size(line)


def test_length_writer_never_more_nor_fewer() -> None:
    writer = LengthWriter(10)
    assert writer.piece(4) == (b"", b"") and writer.remaining == 6
    with pytest.raises(FramingError):
        writer.piece(7)
    with pytest.raises(FramingError):
        writer.end()
    writer.piece(6)
    assert writer.end() == b""


def test_chunked_writer() -> None:
    writer = ChunkedWriter()
    assert writer.piece(0) == (b"", b"")  # never a zero chunk before the end
    assert writer.piece(26) == (b"1a\r\n", b"\r\n")
    assert writer.end() == b"0\r\n\r\n"
    assert writer.chunked and writer.remaining is None


def test_close_and_no_body_writers() -> None:
    assert CloseWriter().piece(5) == (b"", b"") and CloseWriter().end() == b""
    with pytest.raises(FramingError):
        NoBodyWriter().piece(1)
    assert NoBodyWriter().piece(0) == (b"", b"")


@pytest.mark.parametrize(
    ("result", "kind"),
    [
        (framing.Framing(Delimit.LENGTH, 3), LengthWriter),
        (framing.Framing(Delimit.CHUNKED), ChunkedWriter),
        (framing.Framing(Delimit.CLOSE), CloseWriter),
        (framing.Framing(Delimit.NONE), NoBodyWriter),
    ],
)
def test_writer_for(result: framing.Framing, kind: type) -> None:
    assert isinstance(writer_for(result), kind)
