"""The upstream side of fastbody's reverse proxy, free of any server: the request head it sends,
how it reads the response head and body framing, and its keep-alive connection pools.

Reading is done with ``MSG_PEEK`` so that not one body byte is read into Python: the head (and
each chunk-size line) is taken off the socket exactly, and the body bytes stay in the kernel for
splice. The steps are generators that yield I/O requests (``Peek``/``Take``), run by a blocking
driver (WSGI) and an asyncio one (ASGI): one parser, two ways to wait.
"""

from __future__ import annotations

import asyncio
import enum
import fcntl
import os
import select
import socket
import struct
import termios
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11

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


class BodyKind(enum.Enum):
    NONE = "none"  # HEAD, 1xx, 204, 304
    LENGTH = "length"
    CHUNKED = "chunked"
    CLOSE = "close"  # delimited by the upstream closing the connection


@dataclass(frozen=True)
class Framing:
    kind: BodyKind
    length: int = 0

    @property
    def chunked(self) -> bool:
        return self.kind is BodyKind.CHUNKED


def request_framing(headers: list[tuple[bytes, bytes]]) -> Framing:
    """How the client's request body is framed (it is forwarded framed the same way)."""
    lengths = [value for name, value in headers if name.lower() == b"content-length"]
    chunked = any(name.lower() == b"transfer-encoding" for name, _ in headers)
    if chunked:
        return Framing(BodyKind.CHUNKED)
    if lengths:
        return Framing(BodyKind.LENGTH, int(lengths[0]))
    return Framing(BodyKind.NONE)


def response_framing(method: str, status: int, headers: list[tuple[bytes, bytes]]) -> Framing:
    """How the upstream's response body is delimited; ambiguous framing (the stuff of request
    smuggling) is refused rather than guessed."""
    lengths = [value.strip() for name, value in headers if name.lower() == b"content-length"]
    codings = [value.strip().lower() for name, value in headers if name.lower() == b"transfer-encoding"]
    if lengths and codings:
        raise UpstreamError("upstream sent both Content-Length and Transfer-Encoding")
    if len(set(lengths)) > 1 or any(b"," in value for value in lengths):
        raise UpstreamError("upstream sent conflicting Content-Length values")
    if lengths and not lengths[0].isdigit():
        raise UpstreamError(f"upstream sent an invalid Content-Length: {lengths[0]!r}")
    if codings and codings != [b"chunked"]:
        raise UpstreamError(f"upstream sent an unsupported Transfer-Encoding: {codings!r}")
    if method == "HEAD" or status < 200 or status in (204, 304):
        return Framing(BodyKind.NONE)
    if codings:
        return Framing(BodyKind.CHUNKED)
    if lengths:
        return Framing(BodyKind.LENGTH, int(lengths[0]))
    return Framing(BodyKind.CLOSE)


def chunk_size(line: bytes) -> int:
    """The size in a chunk-size line (``1a2b;ext=1\\r\\n``); anything malformed is refused."""
    size, _, _extensions = line[:-2].partition(b";")
    size = size.rstrip(b" \t")
    if not line.endswith(b"\r\n") or not size or len(size) > 15:
        raise UpstreamError(f"invalid chunk-size line from upstream: {line[:40]!r}")
    if any(byte not in b"0123456789abcdefABCDEF" for byte in size):
        raise UpstreamError(f"invalid chunk size from upstream: {size[:40]!r}")
    return int(size, 16)


def forwarded_headers(
    headers: list[tuple[bytes, bytes]],
    *,
    client: str | None,
    scheme: str,
    upstream: Upstream,
    preserve_host: bool,
    framing: Framing,
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
    if framing.kind is BodyKind.LENGTH:
        out.append((b"content-length", b"%d" % framing.length))
    elif framing.kind is BodyKind.CHUNKED:
        out.append((b"transfer-encoding", b"chunked"))
    return out


# Reading with MSG_PEEK: steps and their two drivers


@dataclass(frozen=True)
class Peek:
    """Wait until the socket has bytes (or its end); see up to ``size`` of them, unread."""

    size: int


@dataclass(frozen=True)
class Take:
    """Read exactly ``size`` bytes that a peek has seen (they are in the socket already)."""

    size: int


Step = Generator[Peek | Take, bytes, Any]


def read_through(terminator: bytes, limit: int, what: str) -> Step:
    """Take bytes off the socket up to and including the first ``terminator``; no byte more."""
    taken = b""
    while True:
        seen = yield Peek(limit + len(terminator) - len(taken))
        if not seen:
            if not taken and what == "response head":
                raise UpstreamClosed("upstream closed the connection before responding")
            raise UpstreamError(f"upstream closed the connection inside the {what}")
        found = (taken[-len(terminator) + 1 :] + seen).find(terminator)
        if found >= 0:
            # Bytes of ``seen`` up to the end of the terminator (it may have begun in ``taken``).
            need = found + len(terminator) - min(len(taken), len(terminator) - 1)
            taken += yield Take(need)
            return taken
        if len(taken) + len(seen) > limit:
            raise UpstreamError(f"upstream {what} larger than {limit} bytes")
        taken += yield Take(len(seen))


def framing_fields(head: bytes) -> None:
    """Refuse repeated framing fields in a raw head: h11 silently merges identical duplicate
    ``Content-Length`` fields (and ``5, 5``), which a proxy must not forward as if unambiguous."""
    lengths = encodings = 0
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        name = name.strip().lower()
        if name == b"content-length":
            lengths += 1
            if b"," in value:
                raise UpstreamError("upstream sent a Content-Length list")
        elif name == b"transfer-encoding":
            encodings += 1
    if lengths > 1:
        raise UpstreamError("upstream sent duplicate Content-Length fields")
    if encodings > 1:
        raise UpstreamError("upstream sent duplicate Transfer-Encoding fields")


def read_head(conn: h11.Connection) -> Generator[Peek | Take, bytes, h11.Response]:
    """The response head (1xx informational heads skipped), parsed by h11."""
    while True:
        head = yield from read_through(b"\r\n\r\n", MAX_HEAD, "response head")
        framing_fields(head)
        conn.receive_data(head)
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as error:
            raise UpstreamError(f"invalid response head from upstream: {error}") from None
        if isinstance(event, h11.Response):
            return event
        if not isinstance(event, h11.InformationalResponse) or event.status_code == 101:
            raise UpstreamError(f"unexpected response from upstream: {event!r}")


def read_chunk_header() -> Generator[Peek | Take, bytes, int]:
    return chunk_size((yield from read_through(b"\r\n", MAX_LINE, "chunk-size line")))


def read_chunk_end() -> Generator[Peek | Take, bytes, None]:
    if (yield from read_through(b"\r\n", 2, "chunk end")) != b"\r\n":
        raise UpstreamError("chunk data not followed by CRLF")


def read_trailers() -> Generator[Peek | Take, bytes, None]:
    """Trailer fields after the last chunk (dropped: hop-by-hop to this proxy), up to the blank line."""
    total = 0
    while (line := (yield from read_through(b"\r\n", MAX_LINE, "trailer"))) != b"\r\n":
        total += len(line)
        if total > MAX_HEAD:
            raise UpstreamError("upstream trailers too large")


def run_blocking(step: Step, sock: socket.socket, timeout: float | None) -> Any:
    """Run ``step`` on a blocking socket; ``TimeoutError`` when no byte comes for ``timeout``."""
    try:
        request = next(step)
        while True:
            if isinstance(request, Peek):
                if not _poll(sock, timeout):
                    raise TimeoutError(f"upstream sent nothing for {timeout} s")
                request = step.send(sock.recv(request.size, socket.MSG_PEEK | socket.MSG_DONTWAIT))
            else:
                request = step.send(_take(sock, request.size))
    except StopIteration as done:
        return done.value


async def run_async(step: Step, sock: socket.socket, timeout: float | None) -> Any:
    """Run ``step`` on a non-blocking socket on the running loop (never owned by a transport)."""
    loop = asyncio.get_running_loop()
    try:
        request = next(step)
        while True:
            if isinstance(request, Peek):
                seen = await asyncio.wait_for(_peek_async(loop, sock, request.size), timeout)
                request = step.send(seen)
            else:
                request = step.send(_take(sock, request.size))
    except StopIteration as done:
        return done.value


async def _peek_async(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    while True:
        try:
            return sock.recv(size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            ready = loop.create_future()
            loop.add_reader(sock.fileno(), ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_reader(sock.fileno())


def _take(sock: socket.socket, size: int) -> bytes:
    data = sock.recv(size, socket.MSG_DONTWAIT)  # peeked already: all of it is there
    if len(data) != size:
        raise UpstreamError(f"upstream socket gave {len(data)} of {size} peeked bytes")
    return data


def _poll(sock: socket.socket, timeout: float | None) -> bool:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(None if timeout is None else timeout * 1000))


_TCPI_BYTES_RECEIVED = 128
"""Offset of ``tcpi_bytes_received`` (u64, Linux >= 4.1) in ``struct tcp_info``."""


def bytes_consumed(sock: socket.socket) -> int | None:
    """Bytes this side has read off the connection so far, by whoever read them (recv here,
    splice in the server): what the peer's data advanced the stream by, minus what still
    waits unread. ``None`` when the kernel cannot say. The one way to know, whatever server
    moved a body, that exactly the body's bytes were consumed: the connection is then clean."""
    # The two counts are read apart while bytes may still arrive: they agree only when the
    # stream did not advance between two readings of what was received, around the unread count.
    try:
        received = _bytes_received(sock)
        for _ in range(100):
            unread = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
            again = _bytes_received(sock)
            if received is None or again == received:
                return None if received is None else received - int(unread)
            received = again
    except (OSError, ValueError):
        return None
    return None


def _bytes_received(sock: socket.socket) -> int | None:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    if len(info) < _TCPI_BYTES_RECEIVED + 8:
        return None
    received: int = struct.unpack_from("Q", info, _TCPI_BYTES_RECEIVED)[0]
    return received


REPLAYABLE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
"""Methods a proxy may send again on a new connection (as Go's transport does), bodiless only."""


def may_retry(error: BaseException, method: str, reused: bool, framing: Framing) -> bool:
    """Whether a failed exchange is worth one retry on a new connection: a kept-alive connection
    the upstream closed before answering, and a request that can safely be sent twice."""
    stale = isinstance(error, UpstreamClosed | ConnectionResetError | BrokenPipeError)
    return stale and reused and method in REPLAYABLE and framing.kind is BodyKind.NONE


def readable_now(sock: socket.socket) -> bool:
    return _poll(sock, 0)


def idle_and_clean(sock: socket.socket) -> bool:
    """Whether a kept-alive upstream connection may carry another request: nothing unread and
    not closed (a readable idle connection has either stray bytes or its end)."""
    return sock.fileno() >= 0 and not _poll(sock, 0)


# Connection pools


class _Pool:
    """Idle keep-alive connections to one upstream, at most ``max_idle``, per process."""

    def __init__(self, upstream: Upstream, max_idle: int, connect_timeout: float) -> None:
        self.upstream = upstream
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self._idle: list[socket.socket] = []
        self._pid = os.getpid()
        self.connections_made = 0

    def _reusable(self) -> socket.socket | None:
        if self._pid != os.getpid():  # forked: the parent's connections are not ours
            self._idle, self._pid = [], os.getpid()
        while True:
            try:
                sock = self._idle.pop()  # atomic: gthread workers acquire from several threads
            except IndexError:
                return None
            if idle_and_clean(sock):
                return sock
            sock.close()

    def release(self, sock: socket.socket, reusable: bool) -> None:
        if reusable and len(self._idle) < self.max_idle and idle_and_clean(sock):
            self._idle.append(sock)
        else:
            sock.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    def _refused(self, error: OSError) -> UpstreamError:
        return UpstreamError(f"upstream {self.upstream.authority} unreachable: {error}")


class BlockingPool(_Pool):
    def acquire(self) -> tuple[socket.socket, bool]:
        """A connection (and whether it was reused from the pool)."""
        sock = self._reusable()
        if sock is not None:
            return sock, True
        try:
            sock = socket.create_connection((self.upstream.host, self.upstream.port), self.connect_timeout)
        except OSError as error:
            raise self._refused(error) from None
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connections_made += 1
        return sock, False


class AsyncPool(_Pool):
    async def acquire(self) -> tuple[socket.socket, bool]:
        """A connection (and whether it was reused); each resolved address is tried in turn,
        as ``socket.create_connection`` does (``localhost`` may resolve to ``::1`` first)."""
        sock = self._reusable()
        if sock is not None:
            return sock, True
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.upstream.host, self.upstream.port, type=socket.SOCK_STREAM)
        except OSError as error:
            raise self._refused(error) from None
        failure: BaseException = OSError("no address")
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, address), self.connect_timeout)
            except (OSError, asyncio.TimeoutError) as error:
                sock.close()
                failure = error
                continue
            except BaseException:  # cancelled: the socket is ours to close
                sock.close()
                raise
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connections_made += 1
            return sock, False
        raise self._refused(OSError(str(failure) or "connect timed out"))
