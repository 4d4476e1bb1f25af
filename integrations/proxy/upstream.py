"""The upstream side of fastbody's reverse proxy, free of any server: the request head it sends,
how it reads the response head and body framing, and its keep-alive connection pools.

Not one body byte is read into Python: the head (and each chunk-size line) is taken off the
socket exactly by the engine (``fastbody.heads.take_head``, where h11 ends a head, and
``take_through``), and the body bytes stay in the kernel for splice. The reading steps below
are engine steps composed with h11's parsing and ``fastbody.framing``'s rules, run by the
engine's drivers: ``fastbody.heads.run`` for the WSGI proxy, ``arun`` for the ASGI one (a head
within a deadline: ``run_within``, ``arun_within``).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

import fastbody
from fastbody import framing
from fastbody.framing import Delimit, Framing
from fastbody.heads import HeadTooLarge, Step, take_head, take_through

MAX_HEAD = 64 << 10
"""The largest upstream response head accepted (larger: 502)."""

MAX_LINE = 1024
"""The longest chunk-size line (with extensions) accepted."""

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"expect"}
)
"""Headers that belong to one connection, never forwarded (plus what ``Connection`` names and
every ``Proxy-*``). ``Expect`` is answered by the server in front, not passed on."""


class UpstreamError(Exception):
    """The upstream cannot be reached or answered something a proxy must not forward."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


class UpstreamClosed(UpstreamError):
    """The upstream closed the connection before sending a byte of the response: the case of a
    kept-alive connection it had closed meanwhile, where an idempotent request may be retried."""


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int
    base_path: str  # prefixed to every forwarded path ("" for none)

    @classmethod
    def parse(cls, url: str) -> Upstream:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL with a host, not {url!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"upstream URL may not have a query or fragment: {url!r}")
        return cls(parts.hostname, parts.port or 80, parts.path.rstrip("/"))

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 80 else f"{host}:{self.port}"


# Pure decisions: headers and framing


def strip_hop_by_hop(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Headers without the hop-by-hop ones: the fixed set, ``Proxy-*``, and what Connection names."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    return [
        (name, value)
        for name, value in headers
        if (lowered := name.lower()) not in HOP_BY_HOP
        and lowered not in named
        and not lowered.startswith(b"proxy-")
    ]


def wants_upgrade(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"connection" and b"upgrade" in {t.strip().lower() for t in value.split(b",")}:
            return True
    return False


def request_framing(headers: list[tuple[bytes, bytes]]) -> Framing:
    """How the client's request body is framed (it is forwarded framed the same way; the
    server in front has checked it already)."""
    lengths = [value for name, value in headers if name.lower() == b"content-length"]
    if any(name.lower() == b"transfer-encoding" for name, _ in headers):
        return Framing(Delimit.CHUNKED)
    if lengths:
        return Framing(Delimit.LENGTH, framing.content_length(lengths[0]))
    return Framing(Delimit.NONE)


def forwarded_headers(
    headers: list[tuple[bytes, bytes]],
    *,
    client: str | None,
    scheme: str,
    upstream: Upstream,
    preserve_host: bool,
    request: Framing,
) -> list[tuple[bytes, bytes]]:
    """The request headers sent upstream: hop-by-hop removed, Host set, X-Forwarded-* added,
    and the body's framing restated (it was hop-by-hop)."""
    kept = strip_hop_by_hop(headers)
    host = next((value for name, value in kept if name.lower() == b"host"), upstream.authority.encode())
    forwarded_for = [value for name, value in kept if name.lower() == b"x-forwarded-for"]
    drop = {b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"content-length"}
    out = [(name, value) for name, value in kept if name.lower() not in drop]
    out.insert(0, (b"host", host if preserve_host else upstream.authority.encode()))
    chain = b", ".join([*forwarded_for, client.encode()] if client else forwarded_for)
    if chain:
        out.append((b"x-forwarded-for", chain))
    out += [(b"x-forwarded-proto", scheme.encode()), (b"x-forwarded-host", host)]
    if request.delimit is Delimit.LENGTH:
        out.append((b"content-length", b"%d" % (request.length or 0)))
    elif request.delimit is Delimit.CHUNKED:
        out.append((b"transfer-encoding", b"chunked"))
    return out


# Reading: engine steps, parsed here


def _take_through(sock: socket.socket, terminator: bytes | None, limit: int, what: str) -> Step[bytes]:
    """The bytes through ``terminator`` (None: a head's blank line, where h11 finds it)."""
    try:
        if terminator is None:
            taken = yield from take_head(sock, limit)
        else:
            taken = yield from take_through(sock, terminator, limit)
    except HeadTooLarge:
        raise UpstreamError(f"upstream {what} larger than {limit} bytes") from None
    if not taken.endswith(terminator or b"\n"):
        if not taken and what == "response head":
            raise UpstreamClosed("upstream closed the connection before responding")
        raise UpstreamError(f"upstream closed the connection inside the {what}")
    return taken


def _raw_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """The header fields of a raw head as sent (h11 merges repeated Content-Length fields, which
    a proxy must refuse rather than forward as if unambiguous), its lines split as h11 splits
    them (at LF, a CR before it dropped); an obsolete line folding is refused (RFC 9112 5.2)."""
    fields = []
    for line in head.split(b"\n")[1:]:
        line = line.removesuffix(b"\r")
        if line[:1] in (b" ", b"\t"):
            raise UpstreamError("upstream sent an obsolete line folding in its head")
        name, colon, value = line.partition(b":")
        if colon:
            fields.append((name.strip(), value))
    return fields


def read_head(sock: socket.socket, conn: h11.Connection, method: str) -> Step[tuple[h11.Response, Framing]]:
    """The response head (1xx informational heads skipped), parsed by h11, and how its body is
    delimited; ambiguous framing (the stuff of request smuggling) is refused, never guessed.
    Each head is taken off the socket exactly where h11 ends it, and h11 must consume every
    byte taken: a byte it left would be one this proxy and h11 disagree about (502)."""
    while True:
        head = yield from _take_through(sock, None, MAX_HEAD, "response head")
        try:
            fields = framing.declared(_raw_fields(head))
        except framing.FramingError as error:
            raise UpstreamError(f"upstream sent {error}") from None
        conn.receive_data(head)
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as error:
            raise UpstreamError(f"invalid response head from upstream: {error}") from None
        if conn.trailing_data[0]:
            raise UpstreamError("upstream response head not where h11 ends it")
        if isinstance(event, h11.Response):
            return event, framing.for_message(method=method, status=event.status_code, declared=fields)
        if not isinstance(event, h11.InformationalResponse) or event.status_code == 101:
            raise UpstreamError(f"unexpected response from upstream: {event!r}")


def read_chunk_header(sock: socket.socket) -> Step[int]:
    line = yield from _take_through(sock, b"\r\n", MAX_LINE, "chunk-size line")
    try:
        return framing.chunk_size(line)
    except framing.FramingError as error:
        raise UpstreamError(f"upstream sent an {error}") from None


def read_chunk_end(sock: socket.socket) -> Step[None]:
    if (yield from _take_through(sock, b"\r\n", 2, "chunk end")) != b"\r\n":
        raise UpstreamError("chunk data not followed by CRLF")


def read_trailers(sock: socket.socket) -> Step[None]:
    """Trailer fields after the last chunk (dropped: hop-by-hop to this proxy), up to the blank
    line. A bare CR or LF in one is refused: h11 would end the trailers at a bare LF's blank
    line, and the two readers would disagree about where the message ends. So is a section
    h11 refuses (a line that is no field, a bad Content-Length): the same verdict as h11's."""
    lines = []
    total = 0
    while (line := (yield from _take_through(sock, b"\r\n", MAX_LINE, "trailer"))) != b"\r\n":
        if b"\n" in line[:-2] or b"\r" in line[:-2]:
            raise UpstreamError(f"upstream sent an invalid trailer line: {line[:40]!r}")
        total += len(line)
        if total > MAX_HEAD:
            raise UpstreamError("upstream trailers too large")
        lines.append(line)
    if lines:
        _check_trailers(b"".join(lines))


_LAST_CHUNK = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"


def _check_trailers(lines: bytes) -> None:
    """``UpstreamError`` unless h11 reads ``lines`` (CRLF-ended field lines) as a trailer
    section: h11's own parse of a last chunk carrying them is the verdict."""
    reader = h11.Connection(h11.CLIENT)
    reader.send(h11.Request(method="GET", target="/", headers=[("Host", "upstream")]))
    reader.receive_data(_LAST_CHUNK + lines + b"\r\n")
    try:
        while not isinstance(event := reader.next_event(), h11.EndOfMessage):
            if event is h11.NEED_DATA:
                raise UpstreamError("upstream trailers not where h11 ends them")
    except h11.RemoteProtocolError as error:
        raise UpstreamError(f"upstream sent invalid trailers: {error}") from None
    if reader.trailing_data[0]:
        raise UpstreamError("upstream trailers not where h11 ends them")


def chunk_after(sock: socket.socket) -> Step[int]:
    """The size of the next chunk, once the one before it was forwarded whole (0: the last)."""
    yield from read_chunk_end(sock)
    return (yield from read_chunk_header(sock))


REPLAYABLE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
"""Methods a proxy may send again on a new connection (as Go's transport does), bodiless only."""


def may_retry(error: BaseException, method: str, reused: bool, request: Framing) -> bool:
    """Whether a failed exchange is worth one retry on a new connection: a kept-alive connection
    the upstream closed before answering, and a request that can safely be sent twice."""
    unsent = isinstance(error, fastbody.PeerClosedError) and error.sent == 0  # the request's write
    stale = unsent or isinstance(error, UpstreamClosed | ConnectionResetError | BrokenPipeError)
    return stale and reused and method in REPLAYABLE and request.delimit is Delimit.NONE
