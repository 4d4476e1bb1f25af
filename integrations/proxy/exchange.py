"""One exchange with the upstream, free of any server: the request head and its framing, the
engine steps that send it and read the answer, what the answer means, what a failure tells
the client. ``ReverseProxy`` (ASGI) and ``WSGIReverseProxy`` (WSGI) share all of it and differ
only in how they talk to their server: which driver runs the steps (``arun``/``run``), and how
the body reaches the client (``splicesend``/``wsgi.file_wrapper``).
"""

from __future__ import annotations

import asyncio
import http
import logging
import re
import socket
from dataclasses import dataclass
from typing import Any

import h11

import fastbody
from fastbody.framing import Delimit, Framing
from fastbody.heads import Step

from .upstream import (
    Upstream,
    UpstreamError,
    forwarded_headers,
    may_retry,
    read_chunk_header,
    read_head,
    request_framing,
    strip_hop_by_hop,
)

COPY_CHUNK = 64 << 10
"""Bytes read at a time when the body must pass through Python (no zero-copy server)."""

Headers = list[tuple[bytes, bytes]]


class Settings:
    """What both endpoints are configured with."""

    def __init__(
        self,
        upstream: str,
        *,
        preserve_host: bool = False,
        connect_timeout: float = 5.0,
        response_timeout: float = 60.0,
        max_idle: int = 32,
    ) -> None:
        self.upstream = Upstream.parse(upstream)
        self.preserve_host = preserve_host
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.max_idle = max_idle

    def exchange(
        self, method: str, path: bytes, query: bytes, headers: Headers, client: str | None, scheme: str
    ) -> Exchange:
        """The exchange that forwards this request: its head and framing, decided here."""
        request = request_framing(headers)
        sent = forwarded_headers(
            headers,
            client=client,
            scheme=scheme,
            upstream=self.upstream,
            preserve_host=self.preserve_host,
            request=request,
        )
        return Exchange.of(h11.Request(method=method, target=self.target(path, query), headers=sent), request)

    def where(self, exchange: Exchange) -> str:
        """The request as sent upstream, for the log: its method and the upstream's URL."""
        return f"{exchange.method} http://{self.upstream.authority}{exchange.target.decode('latin-1')}"

    def target(self, path: bytes, query: bytes) -> bytes:
        base = self.upstream.base_path.encode()
        path = path if path.startswith(b"/") else b"/" + path
        return base + path + (b"?" + query if query else b"")


@dataclass
class Answer:
    """What the upstream answered: its head, how its body is delimited, and the first chunk's
    size when that was in the socket already (read before the head goes to the client, so that
    a bad one is still a 502)."""

    response: h11.Response
    body: Framing
    first_chunk: int | None

    @property
    def headers(self) -> Headers:
        """The upstream's response headers for the client: not the hop-by-hop ones, and not Date
        and Server, which the server in front writes itself (as nginx hides them by default)."""
        kept = strip_hop_by_hop(list(self.response.headers.raw_items()))
        return [(name, value) for name, value in kept if name.lower() not in (b"date", b"server")]

    @property
    def reusable(self) -> bool:
        """Whether the upstream lets the connection carry another request after this answer."""
        tokens = {
            token.strip().lower()
            for name, value in self.response.headers.raw_items()
            if name.lower() == b"connection"
            for token in value.split(b",")
        }
        keep_alive = self.response.http_version == b"1.1" or b"keep-alive" in tokens
        return b"close" not in tokens and keep_alive


@dataclass
class Exchange:
    """One request to the upstream, sans-IO: the bytes of its head, its body's framing, and the
    h11 connection that parses the answer."""

    method: str
    target: bytes
    head: bytes
    request: Framing
    conn: h11.Connection

    @classmethod
    def of(cls, request: h11.Request, framing: Framing) -> Exchange:
        conn = h11.Connection(h11.CLIENT)
        head = conn.send(request) or b""
        return cls(request.method.decode("ascii"), request.target, head, framing, conn)

    def again(self) -> Exchange:
        """The same request for a new connection (a retry)."""
        parser = h11.Connection(h11.SERVER)
        parser.receive_data(self.head)
        event = parser.next_event()
        assert isinstance(event, h11.Request)
        request = h11.Request(
            method=event.method, target=event.target, headers=list(event.headers.raw_items())
        )
        return Exchange.of(request, self.request)

    def after(self, error: BaseException, attempt: int, reused: bool, timeout: float) -> Exchange:
        """The exchange to try next after ``error`` on the ``attempt``-th connection: the same
        request again, once, for a kept-alive connection that the upstream closed before
        answering (``may_retry``); otherwise the error, as what it tells the client."""
        if attempt == 0 and may_retry(error, self.method, reused, self.request):
            return self.again()
        if isinstance(error, UpstreamError | OSError | asyncio.TimeoutError):
            raise failure(error, timeout) from None
        raise error

    def send(self, sock: socket.socket, body: Any, timeout: float, *, blocking: bool) -> Step[None]:
        """Send the request (head, then ``body``: an iterable or async iterable of bytes, framed as
        the client framed it): engine steps for either driver, run with ``timeout`` as an idle
        timeout (an upload may take long, as long as it moves)."""
        writer = fastbody.ResponseWriter(sock, self.request, head=self.head, timeout=timeout)
        yield from writer.step(body, last=True, blocking=blocking)

    def answer(self, sock: socket.socket, *, named_only: bool) -> Step[Answer]:
        """Read the answer's head (1xx heads skipped): engine steps for either driver, run with
        the response timeout as a deadline for all of it (``heads.run_within``/``arun_within``:
        a head trickled a byte at a time, or 1xx heads without end, cannot hold the client
        longer). A status the server in front cannot send (``sendable``; ``named_only`` as
        there) is a 502."""
        response, delimited = yield from read_head(sock, self.conn, self.method)
        if not sendable(response.status_code, named_only=named_only):
            raise UpstreamError(f"upstream answered status {response.status_code}, which is not forwarded")
        if has_control_byte(response):
            raise UpstreamError("upstream sent a control character in its head, which is not forwarded")
        first = None
        if delimited.delimit is Delimit.CHUNKED and fastbody.readable_now(sock):
            # One not there yet (an event stream's first event) does not hold the head back.
            first = yield from read_chunk_header(sock)
        return Answer(response, delimited, first)


NAMED = frozenset(status.value for status in http.HTTPStatus)
"""The statuses with a reason phrase in ``http.HTTPStatus``."""


def sendable(status: int, *, named_only: bool) -> bool:
    """Whether an upstream's final status is forwarded (otherwise: 502), one rule for both
    proxies: 100-599 only (RFC 9110 15: a 3-digit code whose first digit is 1-5), and with
    ``named_only`` (the ASGI proxy) only one with a phrase in ``http.HTTPStatus``, the statuses
    every ASGI server can send (uvicorn raised inside ``send`` for 999, leaving the client zero
    bytes). The WSGI proxy writes the upstream's own phrase, so any 100-599 goes."""
    return 100 <= status <= 599 and (status in NAMED or not named_only)


CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
"""The bytes no reason phrase or field value may hold (RFC 9110 5.5, RFC 9112 4: CTLs but HTAB)."""


def has_control_byte(response: h11.Response) -> bool:
    """Whether the head holds a byte that h11 lets through but gunicorn (a 500) and uvicorn's
    httptools protocol (``send`` raises, the client gets nothing) refuse to send: a 502, from
    either proxy, rather than an answer that depends on the server in front."""
    return bool(CONTROL.search(response.reason)) or any(
        CONTROL.search(value) for _, value in response.headers
    )


def failure(error: BaseException, timeout: float) -> UpstreamError:
    """What an error talking to the upstream tells the client (502, or 504 for a timeout)."""
    if isinstance(error, UpstreamError):
        return error
    if isinstance(error, TimeoutError | asyncio.TimeoutError):
        return UpstreamError(f"no response from upstream within {timeout} s", 504)
    return UpstreamError(f"upstream connection failed: {error}")


def refused(log: logging.Logger, where: str, error: UpstreamError) -> tuple[int, str]:
    """Log why the upstream's answer cannot be forwarded (one line, naming the upstream and
    what the client is told); the status and the text for the client, which are generic: how
    the upstream failed, and where it is, are the operator's to know, not the client's."""
    reason = REASONS.get(error.status, "Error")
    log.error("proxy: %s: %s; answered %d %s", where, error, error.status, reason)
    return error.status, reason


def plain(text: str) -> tuple[Headers, bytes]:
    """A short text body (a 502's reason phrase) and its headers."""
    body = (text + "\n").encode()
    return [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body))], body


REASONS = {501: "Not Implemented", 502: "Bad Gateway", 504: "Gateway Timeout"}
