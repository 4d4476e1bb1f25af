"""Properties of the proxy's reading of an upstream answer against h11's verdict on the same bytes.

The bytes are written into one end of a real socketpair and read from the other by the proxy's own
steps, exactly as both proxies read an upstream: ``Exchange.answer`` (``upstream.read_head``: the
head taken off the socket by ``fastbody.heads.take_head``, its fields split by ``_raw_fields``,
``framing.declared``/``for_message``, h11 for the rest, and the first chunk-size line when it is
there already), then ``WSGIReverseProxy._pieces`` (``read_chunk_header``, ``chunk_after``,
``read_trailers``), each piece moved off the socket by ``fastbody.transfer`` (splice) as fastbody's
gunicorn worker moves it. The reference is ``h11.Connection(h11.CLIENT)`` after sending the same
request, fed the same bytes and their end.

1. Heads (grammar and mutations: bare LF/CR, NUL, obs-fold, spaces before colons, repeated and
   list Content-Length, signs, huge numbers, 1xx heads first, garbage): the proxy never accepts a
   head h11 rejects, and refuses one h11 takes only by a rule its docstrings or README state
   (``HEAD_STRICTER``); when both accept, the body starts at the same byte, with the same status
   and the same framing (content-length N, chunked, close-delimited).
2. Chunked bodies (RFC 9112 7.1's grammar, chunk extensions per 7.1.1, trailers, and mutations):
   the proxy never accepts a body h11 rejects (but for one documented difference: BWS before a
   chunk extension, which RFC 9112 allows and h11 refuses), refuses one h11 takes only by a
   stated rule (``CHUNKED_STRICTER``); when both accept, the same body bytes, and the message ends
   at the same byte.
"""

from __future__ import annotations

import ast
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import fastbody
from fastbody import framing
from fastbody.framing import Delimit, Framing
from fastbody.heads import run_within
from fastbody.integrations.proxy.exchange import Answer
from fastbody.integrations.proxy.upstream import UpstreamError
from fastbody.integrations.proxy.wsgi import WSGIReverseProxy

PROPERTY = settings(
    max_examples=700, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
BIG = settings(PROPERTY, max_examples=6000)
TIMEOUT = 5.0
HOST = "upstream.test"
PROXY = WSGIReverseProxy(f"http://{HOST}")  # no connection is made: the tests hand it sockets

CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
Framed = tuple[str, int | None]  # ("length", N) | ("chunked", None) | ("close", None)


# ---- the two readers ---------------------------------------------------------------------------


def fed(data: bytes) -> socket.socket:
    """The reading end of a socketpair that holds ``data`` and then its end."""
    ours, theirs = socket.socketpair()
    with theirs:
        theirs.sendall(data)
        theirs.shutdown(socket.SHUT_WR)
    return ours


def drained(sock: socket.socket) -> bytes:
    rest = b""
    while got := sock.recv(65536):
        rest += got
    return rest


def framed(framing: Framing) -> Framed:
    """fastbody's framing as h11 names it: no body (HEAD, 204, 304) is a length of 0, as in h11."""
    if framing.delimit is Delimit.NONE:
        return ("length", 0)
    if framing.delimit is Delimit.LENGTH:
        return ("length", framing.length)
    return ("chunked", None) if framing.delimit is Delimit.CHUNKED else ("close", None)


@dataclass(frozen=True)
class Head:
    """Where a reader put the end of the head (1xx heads included), and what it read there."""

    end: int
    status: int
    framing: Framed


@dataclass(frozen=True)
class Refused:
    why: str
    in_trailers: bool = False  # (h11) refused while reading the trailer section


def h11_client(method: str) -> h11.Connection:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", HOST)]))
    conn.send(h11.EndOfMessage())
    return conn


def h11_head(conn: h11.Connection, data: bytes) -> Head | Refused:
    """h11's reading of the head: the final response after any 1xx, where it ends, its framing."""
    conn.receive_data(data)
    conn.receive_data(b"")
    try:
        while isinstance(got := conn.next_event(), h11.InformationalResponse):
            pass
    except h11.RemoteProtocolError as error:
        return Refused(f"h11: {error}")
    if not isinstance(got, h11.Response):
        return Refused(f"h11: {got!r}")  # ConnectionClosed: nothing at all
    reader: Any = conn._reader
    kinds: dict[str, Callable[[], Framed]] = {
        "ContentLengthReader": lambda: ("length", reader._length),
        "ChunkedReader": lambda: ("chunked", None),
        "Http10Reader": lambda: ("close", None),
    }
    return Head(len(data) - len(conn.trailing_data[0]), got.status_code, kinds[type(reader).__name__]())


def proxy_answer(sock: socket.socket, method: str) -> Answer | Refused:
    """The proxy's own reading of the head (both proxies' ``Exchange.answer``), as the WSGI proxy
    runs it (``heads.run_within``); any status 100-599 forwarded (``named_only=False``)."""
    exchange = PROXY.exchange(method, b"/", b"", [(b"host", HOST.encode())], None, "http")
    try:
        return run_within(exchange.answer(sock, named_only=False), TIMEOUT)
    except UpstreamError as error:
        return Refused(f"proxy: {error}")


def proxy_head(data: bytes, method: str) -> tuple[Head, Answer] | Refused:
    with fed(data) as sock:
        answer = proxy_answer(sock, method)
        if isinstance(answer, Refused):
            return answer
        end = len(data) - len(drained(sock))
    head = Head(end, answer.response.status_code, framed(answer.body))
    return head, answer


# ---- 1. heads ----------------------------------------------------------------------------------

TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
NASTY = b"\r\n\x00 \t:\x7f\x80,x0;\x0b\x0c"
"""Bytes that matter to a head or chunk reader: what mutations insert or substitute."""


def line_end(flawed: bool = True) -> st.SearchStrategy[bytes]:
    """CRLF mostly, or a bare LF (RFC 9112 2.2 lets a recipient take one, and h11 does); when
    ``flawed``, sometimes a bare CR or CR CR LF."""
    good = [b"\r\n"] * 8 + [b"\n"]
    return st.sampled_from([*good, b"\r", b"\r\r\n"] if flawed else good)


def pick(
    draw: st.DrawFn, flawed: bool, good: st.SearchStrategy[bytes], bad: st.SearchStrategy[bytes]
) -> bytes:
    """A good part, or (when ``flawed``, one time in four) a bad one."""
    return draw(bad if flawed and draw(st.integers(0, 3)) == 0 else good)


@st.composite
def status_line(draw: st.DrawFn, flawed: bool) -> bytes:
    version = pick(
        draw,
        flawed,
        st.sampled_from([b"HTTP/1.1"] * 3 + [b"HTTP/1.0"]),
        st.sampled_from([b"HTTP/2.0", b"http/1.1", b"HTTP/1", b"HTTP/1.1 ", b"HTTP/1.x", b""]),
    )
    code = pick(
        draw,
        flawed,
        st.sampled_from([200] * 6 + [101, 201, 204, 206, 299, 304, 404, 500, 599]).map(lambda c: b"%03d" % c),
        st.one_of(
            st.integers(0, 999).map(lambda code: b"%03d" % code),
            st.sampled_from([b"20", b"2000", b" 200", b"2x0", b"+20", b"", b"600", b"999", b"099"]),
        ),
    )
    reason = pick(
        draw,
        flawed,
        st.sampled_from([b" OK", b" OK", b"", b" ", b" Not Found", b" tab\there", b" \x80\xff"]),
        st.sampled_from([b" nul\x00", b" del\x7f", b"OK", b" a\rb", b" \x0b"]),
    )
    return version + b" " + code + reason


def digits(low: int, high: int) -> st.SearchStrategy[bytes]:
    return st.text("0123456789", min_size=low, max_size=high).map(str.encode)


LENGTHS = st.one_of(st.integers(0, 40).map(lambda n: b"%d" % n), st.sampled_from([b"05", b"0", b"007"]))
BAD_LENGTHS = st.one_of(
    st.sampled_from([b"+5", b"-5", b"5, 5", b"5,5", b"5,6", b"5 5", b"0x5", b"", b"5\x00", b"\x0b7", b"5."]),
    digits(17, 24),  # past what fastbody reads (18 digits), and past 2**63
)
CODINGS = st.sampled_from([b"chunked"] * 4 + [b"Chunked", b"CHUNKED"])
BAD_CODINGS = st.sampled_from(
    [b"gzip, chunked", b"chunked, chunked", b"identity", b"chunked;q=1", b"", b"chunked,", b"gzip", b"chunk"]
)
TEXT = st.binary(max_size=12).map(lambda raw: bytes(b % 94 + 33 for b in raw))  # visible ASCII
VALUES = st.one_of(TEXT, st.sampled_from([b"close", b"keep-alive", b"a\tb", b"a b", b"\x80\xfe"]))
BAD_VALUES = st.sampled_from([b"a\x00b", b"a\rb", b"a\x7f", b"a\x0bb", b"\x1b[0m"])
NAMES = st.one_of(
    st.sampled_from(
        [b"Content-Length"] * 4
        + [b"Transfer-Encoding"] * 4
        + [b"content-length", b"TRANSFER-ENCODING", b"Connection", b"X-A", b"Server"]
    ),
    st.text(TOKEN, min_size=1, max_size=8).map(str.encode),
)
BAD_NAMES = st.sampled_from([b"Bad Name", b"", b"X\x00", b"\x80", b"X(y)", b"X/y"])


@st.composite
def field_line(draw: st.DrawFn, flawed: bool) -> bytes:
    name = pick(draw, flawed, NAMES, BAD_NAMES)
    lowered = name.lower()
    if lowered == b"content-length":
        value = pick(draw, flawed, LENGTHS, BAD_LENGTHS)
    elif lowered == b"transfer-encoding":
        value = pick(draw, flawed, CODINGS, BAD_CODINGS)
    else:
        value = pick(draw, flawed, VALUES, BAD_VALUES)
    colon = pick(draw, flawed, st.just(b":"), st.sampled_from([b" :", b"\t:", b""]))
    space = draw(st.sampled_from([b" ", b"", b"\t", b"  "]))
    return name + colon + space + value + draw(st.sampled_from([b""] * 6 + [b" ", b"\t"]))


@st.composite
def head(draw: st.DrawFn, flawed: bool, informational: bool = False) -> bytes:
    if informational:
        line = draw(st.sampled_from([b"HTTP/1.1 100 Continue", b"HTTP/1.1 102 Processing", b"HTTP/1.1 103"]))
    else:
        line = draw(status_line(flawed))
    lines = [line, *draw(st.lists(field_line(flawed), max_size=3))]
    # The framing fields a head states: none, one, or two (h11 merges, or lets TE win; RFC 9112 6.3).
    plan = draw(st.sampled_from(["", "l", "t", "t", "lt", "tl", "ll", "tt"]))
    for kind in plan:
        name = draw(
            st.sampled_from([b"Content-Length", b"content-length"] if kind == "l" else [b"Transfer-Encoding"])
        )
        value = (
            pick(draw, flawed, LENGTHS, BAD_LENGTHS)
            if kind == "l"
            else pick(draw, flawed, CODINGS, BAD_CODINGS)
        )
        lines.insert(draw(st.integers(1, len(lines))), name + b": " + value)
    if flawed and len(lines) > 1 and draw(st.integers(0, 4)) == 0:  # an obsolete line folding
        lines.insert(draw(st.integers(1, len(lines))), draw(st.sampled_from([b" folded", b"\tfolded", b" "])))
    if draw(st.integers(0, 39)) == 0:  # a field longer than h11's 16 KiB incomplete-event limit
        lines.append(b"X-Big: " + b"b" * draw(st.sampled_from([16_000, 17_000, 70_000])))
    ends = b"".join(line + draw(line_end(flawed)) for line in lines)
    return ends + draw(st.sampled_from([b"\r\n"] * 8 + [b"\n"]))


TAILS = st.one_of(
    st.sampled_from([b"5\r\nhello\r\n0\r\n\r\n", b"0\r\n\r\n", b"1;a=b\r\nx\r\n0\r\n\r\n"]),
    st.sampled_from(
        [
            b"",
            b"hello",
            b"5\r\nhello\r\n0\r\n\r\n",
            b"0\r\n\r\n",
            b"5;a\nb\r\nhello\r\n",
            b"\r\n\r\nWORLD",
            b"\nHTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ]
    ),
    st.binary(max_size=20),
)


@st.composite
def edited(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few bytes inserted, deleted or replaced (by the bytes that matter most)."""
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        byte = draw(st.one_of(st.sampled_from(list(NASTY)), st.integers(0, 255)))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        if kind == "insert":
            data = data[:at] + bytes([byte]) + data[at:]
        else:
            data = data[:at] + (bytes([byte]) if kind == "replace" else b"") + data[at + 1 :]
    return data


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    """One or two 1xx heads (sometimes), a final head, some bytes after it: by the grammar, or
    with flaws (each part bad one time in four), or edited byte by byte, or garbage, or with
    every CRLF made a bare CR or bare LF."""
    kind = draw(st.sampled_from(["grammar"] * 5 + ["flawed"] * 4 + ["edited"] * 2 + ["garbage", "bare"]))
    if kind == "garbage":
        return draw(st.binary(max_size=60)) + draw(st.sampled_from([b"", b"\r\n\r\n", b"\n\n"]))
    flawed = kind != "grammar"
    heads = (
        draw(st.lists(head(flawed, informational=True), max_size=2)) if draw(st.integers(0, 4)) == 0 else []
    )
    data = b"".join(heads) + draw(head(flawed and kind != "edited")) + draw(TAILS)
    if kind == "edited":
        data = draw(edited(data))
    elif kind == "bare":
        data = data.replace(b"\r\n", draw(st.sampled_from([b"\r", b"\n"])))
    return data


Predicate = Callable[[bytes, int], bool]  # (the bytes, where h11 ended what it took) -> applies
ANY: Predicate = lambda data, end: True  # noqa: E731

HEAD_STRICTER: dict[str, tuple[str, Predicate]] = {
    # framing.declared (README: "repeated or list Content-Length, Transfer-Encoding other than
    # one chunked, both at once: FramingError"; a Content-Length is digits only, at most 18).
    "ambiguous framing": (
        r"proxy: upstream sent (duplicate Content-Length fields|invalid Content-Length|"
        r"unsupported Transfer-Encoding|both Content-Length and Transfer-Encoding)",
        ANY,
    ),
    "obs-fold": (r"proxy: upstream sent an obsolete line folding", ANY),  # _raw_fields (RFC 9112 5.2)
    "status outside 100-599": (
        r"proxy: upstream answered status \d+, which is not forwarded",
        ANY,
    ),  # sendable
    # exchange.has_control_byte: "a byte that h11 lets through but gunicorn and httptools refuse".
    "control byte": (r"proxy: upstream sent a control character in its head", ANY),
    "head over MAX_HEAD": (r"proxy: upstream response head larger than 65536 bytes", ANY),
    # Exchange.answer reads the first chunk-size line when it is there, so that a bad one is a 502
    # (a line framing.chunk_size refuses, see CHUNKED_STRICTER; or not all there before the end).
    "first chunk-size line": (
        r"proxy: upstream (sent an invalid chunk|closed the connection inside the "
        r"chunk-size line|chunk-size line larger than)",
        lambda data, end: refused_chunk_line(data, end, first_only=True),
    ),
}
"""Where the proxy refuses an answer h11 takes, by design (the docstring or README that says so
is named at each); any other refusal of an answer h11 takes fails the property."""

CHUNKED_STRICTER: dict[str, tuple[str, Predicate]] = {
    # framing.chunk_size: "the extensions must be the RFC's grammar exactly" (h11 takes ";.*" and
    # trailing whitespace), at most 15 hex digits; upstream.MAX_LINE.
    "chunk-size line": (
        r"proxy: (.*\()?upstream sent an invalid chunk(-size line| size| extension)",
        lambda data, end: refused_chunk_line(data, len(CHUNKED_HEAD)),
    ),
    "chunk line over MAX_LINE": (
        r"proxy: (.*\()?upstream chunk-size line larger than 1024 bytes",
        lambda data, end: refused_chunk_line(data, len(CHUNKED_HEAD)),
    ),
    # read_trailers: "A bare CR or LF in one is refused: h11 would end the trailers at a bare LF's
    # blank line". Where h11 did end them at a bare LF (the message's last byte taken is an LF
    # without its CR, or follows one), the proxy finds no CRLF line there and the data ends.
    "bare CR/LF in a trailer": (r"proxy: .*\(upstream sent an invalid trailer line", ANY),
    "bare LF ending the trailers": (
        r"proxy: .*\(upstream closed the connection inside the trailer\)",
        lambda data, end: (
            (data[:end].endswith(b"\n") and not data[:end].endswith(b"\r\n"))
            or data[:end].endswith(b"\n\r\n")
        ),
    ),
}


_QUOTED_STRING = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
RFC_CHUNK_LINE = re.compile(
    rb"(?P<size>[0-9A-Fa-f]+)(?:[ \t]*;[ \t]*%s(?:[ \t]*=[ \t]*(?:%s|%s))?)*\r\n"
    % (b"[%s]+" % re.escape(TOKEN.encode()), b"[%s]+" % re.escape(TOKEN.encode()), _QUOTED_STRING)
)
"""RFC 9112 7.1's chunk-size line, written out here from the ABNF (chunk-size, then
``*( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] )``, CRLF)."""


def refused_chunk_line(data: bytes, at: int, *, first_only: bool = False) -> bool:
    """Whether, walking the chunks from ``at`` as h11 does (a line to its CRLF, the data, CRLF),
    a chunk-size line is one the proxy refuses by its stated rules: not RFC 9112's grammar, more
    than 15 hex digits (``framing.chunk_size``), longer than ``upstream.MAX_LINE``; or (the
    first line) not all there."""
    while True:
        end = data.find(b"\r\n", at)
        if end < 0:
            return first_only  # the data ends inside the line
        line = data[at : end + 2]
        found = RFC_CHUNK_LINE.fullmatch(line)
        if not found or len(found["size"]) > 15 or len(line) > 1024:
            return True
        size = int(found["size"], 16)
        if first_only or not size:
            return False
        at = end + 2 + size + 2


def stricter(refused: Refused, documented: dict[str, tuple[str, Predicate]], data: bytes, end: int) -> str:
    """The documented class of a refusal of what h11 takes; fails for any other."""
    for name, (pattern, applies) in documented.items():
        if re.match(pattern, refused.why, re.S) and applies(data, end):
            return name
    raise AssertionError(f"the proxy refused what h11 takes, and no documented rule says so: {refused.why}")


def check_head(data: bytes, method: str) -> str:
    """Check one answer; what the two readers made of it (for the statistics)."""
    theirs = h11_head(h11_client(method), data)
    ours = proxy_head(data, method)
    if isinstance(theirs, Refused):
        assert isinstance(ours, Refused), f"the proxy accepted what h11 refused ({theirs.why}): {ours}"
        return "both refuse"
    if isinstance(ours, Refused):
        return f"only the proxy refuses: {stricter(ours, HEAD_STRICTER, data, theirs.end)}"
    found, answer = ours
    expected = theirs
    if answer.first_chunk is not None:
        # Exchange.answer also took the first chunk-size line, when it was there: through its CRLF.
        line_end_at = data.index(b"\r\n", theirs.end) + 2
        expected = Head(line_end_at, theirs.status, theirs.framing)
        assert theirs.framing == ("chunked", None)
    assert found == expected, data
    return f"both accept: {found.framing[0]}"


@PROPERTY
@given(data=responses(), method=st.sampled_from(["GET", "GET", "HEAD", "POST"]))
def test_proxy_head_as_h11(data: bytes, method: str) -> None:
    event(check_head(data, method))


@pytest.mark.slow
@BIG
@given(data=responses(), method=st.sampled_from(["GET", "GET", "HEAD", "POST"]))
def test_proxy_head_as_h11_many(data: bytes, method: str) -> None:
    event(check_head(data, method))


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\n\nhello\r\n\r\nWORLD",  # bare-LF blank line
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nto the end",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",  # refused by the proxy
        b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\nContent-Length: 0\r\n\r\n",  # obs-fold: refused
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\rX: y\r\n\r\nhello",  # bare CR: both refuse
    ],
)
def test_proxy_head_as_h11_examples(data: bytes) -> None:
    check_head(data, "GET")


# ---- 2. chunked bodies -------------------------------------------------------------------------

QDTEXT = st.sampled_from([b"a", b" ", b"\t", b"!", b"#", b"~", b"\x80", b"\xff", b"=", b";", b","])
BWS = st.sampled_from([b""] * 12 + [b" ", b"\t", b" \t"])
LEADING_BWS = st.sampled_from([b""] * 40 + [b" ", b"\t"])  # before ";": h11 refuses it (see below)


@st.composite
def extension(draw: st.DrawFn) -> bytes:
    """One chunk extension by RFC 9112 7.1.1: BWS ";" BWS name [ BWS "=" BWS token / quoted-string ]."""
    name = draw(st.text(TOKEN, min_size=1, max_size=5).map(str.encode))
    out = draw(LEADING_BWS) + b";" + draw(BWS) + name
    if draw(st.booleans()):
        if draw(st.booleans()):
            value = draw(st.text(TOKEN, min_size=1, max_size=5).map(str.encode))
        else:
            pieces = st.one_of(QDTEXT, st.sampled_from([b'\\"', b"\\\\", b"\\a", b"\\\t", b"\\\x80"]))
            value = b'"' + b"".join(draw(st.lists(pieces, max_size=4))) + b'"'
        out += draw(BWS) + b"=" + draw(BWS) + value
    return out


BAD_EXTENSIONS = st.sampled_from(
    [
        b";",
        b";a b",
        b";a=",
        b"; =b",
        b";a=b c",
        b';a="x',
        b";a\x00",
        b";a\x01=b",
        b";a=\x7f",
        b" ",
        b"\t",
        b";a\nb",
        b";a\rb",
        b"x",
        b';a="\\\n"',
        b";a==b",
        b";a=b;",
        b";a=\x80",
    ]
)
BAD_SIZES = st.sampled_from([b"", b"g", b"-1", b"+5", b"0x5", b"1" * 16, b"f" * 21, b" 5", b"5 "])
DATA_ENDS = st.sampled_from([b"\n", b"", b"\r", b"xy", b"\r\r\n", b"\n\r", b"x\r\n", b"\r\n\r\n"])


@st.composite
def size_text(draw: st.DrawFn, size: int) -> bytes:
    text = b"0" * draw(st.sampled_from([0] * 6 + [1, 3, 14])) + b"%x" % size
    return text.upper() if draw(st.booleans()) else text


@st.composite
def extensions(draw: st.DrawFn, flawed: bool) -> bytes:
    good = st.lists(extension(), max_size=2).map(b"".join)
    return pick(draw, flawed, good, st.builds(bytes.__add__, good, BAD_EXTENSIONS))


@st.composite
def chunk(draw: st.DrawFn, flawed: bool, flaw: str = "") -> bytes:
    """One chunk: by the grammar, with flaws (each part bad one time in four), or with exactly
    the one ``flaw`` named ("size", "extension", "line end", "data end")."""
    data = draw(st.binary(min_size=1, max_size=24))
    size = len(data) + (draw(st.sampled_from([0] * 6 + [-1, 1])) if flawed else 0)
    line = draw(BAD_SIZES) if flaw == "size" else pick(draw, flawed, size_text(max(size, 0)), BAD_SIZES)
    line += draw(st.builds(bytes.__add__, extensions(False), BAD_EXTENSIONS)) if flaw == "extension" else b""
    line += draw(extensions(flawed)) if flaw != "extension" else b""
    line += (
        draw(st.sampled_from([b"\r", b"\r\r\n", b"\n\r"])) if flaw == "line end" else draw(line_end(flawed))
    )
    end = draw(DATA_ENDS) if flaw == "data end" else pick(draw, flawed, st.just(b"\r\n"), DATA_ENDS)
    return line + data + end


TRAILER_FIELDS = st.sampled_from([b"X-Checksum: abc", b"Expires: 0", b"X-A:b", b"X-Empty:", b"X-Tab:\tv "])
BAD_TRAILER_FIELDS = st.sampled_from(
    [
        b"no colon",
        b"Bad Name: v",
        b"X-A : b",
        b": no name",
        b"X-Nul: a\x00b",
        b" folded",
        b"X-Ctl: a\x01b",
        b"Content-Length: abc",
        b"Transfer-Encoding: gzip",
    ]
)


@st.composite
def chunked_body(draw: st.DrawFn) -> bytes:
    """Chunks, the last chunk (extensions allowed), trailer fields, the end (by the grammar; or
    with flaws, each part bad one time in four; or all by the grammar but one flaw in one chunk;
    or edited byte by byte); then bytes after the
    message (the next answer on the connection, or garbage) that neither reader may take."""
    kind = draw(st.sampled_from(["grammar"] * 4 + ["flawed"] * 3 + ["one flaw"] * 4 + ["edited"] * 2))
    flawed = kind == "flawed"
    chunks = draw(st.lists(chunk(flawed), max_size=4))
    if kind == "one flaw":  # every part by the grammar but one, in one chunk: the sharpest test
        flaw = draw(st.sampled_from(["size", "extension", "line end", "data end", "data end"]))
        chunks.insert(draw(st.integers(0, len(chunks))), draw(chunk(False, flaw)))
    body = b"".join(chunks)
    last = b"0" * draw(st.integers(1, 3)) + draw(extensions(flawed))
    body += last + draw(line_end(flawed))
    for field in draw(
        st.lists(st.one_of(TRAILER_FIELDS, BAD_TRAILER_FIELDS) if flawed else TRAILER_FIELDS, max_size=2)
    ):
        body += field + draw(line_end(flawed))
    body += pick(draw, flawed, st.sampled_from([b"\r\n"] * 6 + [b"\n"]), st.sampled_from([b"\r", b""]))
    if kind == "edited":
        body = draw(edited(body))
    return body + draw(st.sampled_from([b"", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"\r\n", b"x"]))


@dataclass(frozen=True)
class Message:
    """A body as read: its bytes, and the byte of the data where the message ended."""

    body: bytes
    end: int


def h11_message(data: bytes) -> Message | Refused:
    conn = h11_client("GET")
    found = h11_head(conn, data)
    if isinstance(found, Refused):
        return found
    body, reader = b"", conn._reader  # (h11 drops its reader on an error: this one tells where it was)
    try:
        while not isinstance(got := conn.next_event(), h11.EndOfMessage):
            assert isinstance(got, h11.Data), got
            body += got.data
    except h11.RemoteProtocolError as error:
        return Refused(f"h11: {error}", in_trailers=bool(getattr(reader, "_reading_trailer", False)))
    return Message(body, len(data) - len(conn.trailing_data[0]))


def proxy_message(data: bytes) -> Message | Refused:
    """The proxy's reading: ``Exchange.answer``, then ``WSGIReverseProxy._pieces``, each piece
    moved by ``fastbody.transfer`` (splice) to a socket the test reads, as fastbody's gunicorn
    worker moves it; what is left in the upstream socket afterwards gives where the message ended."""
    out, into = socket.socketpair()
    with fed(data) as sock, sock.dup() as watch, out, into:
        answer = proxy_answer(sock, "GET")
        if isinstance(answer, Refused):
            return answer
        assert answer.body.delimit is Delimit.CHUNKED
        try:
            for source, count in PROXY._pieces(sock, answer.body, answer.first_chunk, reusable=False):
                assert fastbody.transfer(into, source, count=count, timeout=TIMEOUT) == count
        except fastbody.TransferError as error:  # SourceFailed (a bad line), IncompleteTransfer
            return Refused(f"proxy: {error}")
        into.close()
        body = drained(out)
        return Message(body, len(data) - len(drained(watch)))


def bws_before_extensions(refused: Refused) -> bytes | None:
    """The chunk-size line h11 refused, when it refused it only for whitespace between the size
    and the first ``;``, which RFC 9112 7.1.1 allows (``chunk-ext = *( BWS ";" BWS ...)``) and
    ``framing.chunk_size`` takes, by its docstring ("the RFC's grammar exactly ... BWS"): a
    documented difference. h11 0.16's ``chunk_header`` is ``size [";" .*] OWS CRLF``."""
    found = re.fullmatch(
        rb"h11: illegal chunk header: bytearray\((b.*)\)", refused.why.encode("latin-1"), re.S
    )
    if found is None:
        return None
    line = ast.literal_eval(found.group(1).decode("latin-1"))
    assert isinstance(line, bytes)
    size = re.match(rb"[0-9A-Fa-f]+", line)
    rest = line[size.end() :] if size else b""
    if not size or not rest[:1].isspace() or not rest.lstrip(b" \t").startswith(b";"):
        return None
    try:
        taken = framing.chunk_size(line)
    except framing.FramingError:
        return None  # refused for more than that (a bare LF after it): not this difference
    assert taken == int(size.group(), 16)
    assert H11_CHUNK_HEADER.fullmatch(size.group() + rest.lstrip(b" \t")), line  # only the BWS
    return line


H11_CHUNK_HEADER = re.compile(h11._abnf.chunk_header.encode("ascii"))


def check_chunked(body: bytes) -> str:
    """Check one body; what the two readers made of it (for the statistics)."""
    data = CHUNKED_HEAD + body
    theirs = h11_message(data)
    ours = proxy_message(data)
    if isinstance(theirs, Refused) and bws_before_extensions(theirs) is not None:
        # Documented difference (framing.chunk_size, RFC 9112 7.1.1): "5 ;a" is a chunk-size line
        # with BWS before its extension; h11 refuses it. Checked exactly in bws_before_extensions
        # and test_bws_before_chunk_extension; nothing more to compare for this body.
        return "documented difference: BWS before a chunk extension"
    if isinstance(theirs, Refused):
        assert isinstance(ours, Refused), f"the proxy accepted what h11 refused ({theirs.why}): {ours}"
        return "both refuse" + (" (h11 in the trailers)" if theirs.in_trailers else "")
    if isinstance(ours, Refused):
        return f"only the proxy refuses: {stricter(ours, CHUNKED_STRICTER, data, theirs.end)}"
    assert ours == theirs, data
    return "both accept"


@PROPERTY
@given(body=chunked_body())
def test_proxy_chunked_body_as_h11(body: bytes) -> None:
    event(check_chunked(body))


@pytest.mark.slow
@BIG
@given(body=chunked_body())
def test_proxy_chunked_body_as_h11_many(body: bytes) -> None:
    event(check_chunked(body))


@pytest.mark.parametrize(
    "body",
    [
        b"5\r\nhello\r\n0\r\n\r\n",
        b'5;a=b;c="d e"\r\nhello\r\n000;x\r\nX-Checksum: abc\r\n\r\nHTTP/1.1 200 OK\r\n\r\n',
        b"5;a\nb\r\nhello\r\n0\r\n\r\n",  # bare LF in an extension: refused by the proxy
        b"5\r\nhello\r\n0\r\nX: a\n\r\n\r\n",  # bare LF in a trailer: h11 ends there, the proxy refuses
        b"5\r\nhelloXY0\r\n\r\n",  # no CRLF after the data: both refuse
    ],
)
def test_proxy_chunked_body_as_h11_examples(body: bytes) -> None:
    check_chunked(body)


def test_bws_before_chunk_extension() -> None:
    """The documented difference, exactly: RFC 9112 7.1.1 allows BWS before ``;`` and
    ``framing.chunk_size`` takes it (the proxy forwards the body); h11 refuses the line."""
    data = CHUNKED_HEAD + b"5 ;a=b\r\nhello\r\n0\t;c\r\n\r\n"
    theirs = h11_message(data)
    assert isinstance(theirs, Refused)
    assert bws_before_extensions(theirs) == b"5 ;a=b\r\n"
    assert proxy_message(data) == Message(b"hello", len(data))


@pytest.mark.parametrize(
    "trailer",
    [b"HTTP/1.1 200 OK", b"no colon", b"X-A : b", b"X-Nul: a\x00b", b"Content-Length: abc"],
)
def test_trailer_lines_h11_refuses(trailer: bytes) -> None:
    """A trailer section must be field lines (RFC 9112 7.1.2: ``*( field-line CRLF )``); h11
    refuses the message otherwise, and so does the proxy (found by the property above: the
    proxy dropped such a line and pooled the connection; fixed in 3e45c06)."""
    data = CHUNKED_HEAD + b"5\r\nhello\r\n0\r\n" + trailer + b"\r\n\r\n"
    assert isinstance(h11_message(data), Refused)
    assert isinstance(proxy_message(data), Refused)
