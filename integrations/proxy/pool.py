"""Kept-alive upstream connections: bounded pools, one per proxy, per process."""

from __future__ import annotations

import asyncio
import os
import socket

import fastbody

from .upstream import Upstream, UpstreamError


def idle_and_clean(sock: socket.socket) -> bool:
    """Whether a kept-alive upstream connection may carry another request: nothing unread and
    not closed (a readable idle connection has either stray bytes or its end)."""
    return sock.fileno() >= 0 and not fastbody.readable_now(sock)


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
            sock.settimeout(sock.gettimeout() and None)  # as acquired: no Python-level timeout
            self._idle.append(sock)
        else:
            sock.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    def _refused(self, error: OSError) -> UpstreamError:
        return UpstreamError(f"upstream unreachable: {error}")  # (the log line names the upstream)


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
