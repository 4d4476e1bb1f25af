"""What the hostile-upstream tests share (``test_proxy_hostile.py``, ``test_faults_upstreams.py``):
a raw-socket upstream answering each request by its path with bytes a test chose
(``HostileUpstream``), the reverse proxy under real ``python -m uvicorn`` (fastbody's h11 and
httptools protocols) and ``python -m gunicorn`` (fastbody's gthread and sync workers) processes in
front of it (``proxy_fixture``), a raw-socket client whose bytes h11 parses (``get``), what h11
itself reads from bytes (``h11_reads``), and the proxy worker's holdings (``steady``)."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeAlias

import h11
import pytest
from resources import Held, held
from servers import RawServer, Server, free_port, launch, stop

APPS = Path(__file__).resolve().parent / "apps"
PROTOCOLS = {"h11": "H11Protocol", "httptools": "HttpToolsProtocol"}
OK = b"HTTP/1.1 200 OK\r\n"

Answer: TypeAlias = bytes | Callable[[socket.socket, threading.Event], None]
"""What the upstream does for a request: send these bytes (and wait for the next request on the
connection), or call this with the connection and the upstream's ``stopping`` event (it may
close the connection, or leave it for the next request)."""


class HostileUpstream(RawServer):
    """Answers each request on a connection by its path (``answers``; anything else: a 404 with
    ``Connection: close``), until the proxy closes the connection, the answer closed it, or 5 s
    pass without a request."""

    def __init__(self, answers: Mapping[str, Answer]) -> None:
        self.answers = answers
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                data = b""
                while not self.stopping.is_set() and conn.fileno() >= 0:
                    while b"\r\n\r\n" not in data:
                        got = conn.recv(65536)
                        if not got:
                            return
                        data += got
                    head, _, data = data.partition(b"\r\n\r\n")
                    self.answer(conn, head.split(b" ", 2)[1].decode())
            except OSError:
                pass  # the proxy closed first (what some cases test), or went quiet

    def answer(self, conn: socket.socket, path: str) -> None:
        answer = self.answers.get(path)
        if answer is None:
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        elif isinstance(answer, bytes):
            conn.sendall(answer)
        else:
            answer(conn, self.stopping)


def then_close(data: bytes) -> Answer:
    """Send ``data``, then end the connection (FIN), then wait (5 s at most) for the proxy to
    close its side, so that nothing the proxy still sends is answered with a reset."""

    def answer(conn: socket.socket, stopping: threading.Event) -> None:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass
        conn.close()

    return answer


@dataclass
class Proxy(Server):
    """A proxy process: ``kind`` is the server and its worker (h11, httptools, gthread, sync)."""

    kind: str = ""

    @property
    def pid(self) -> int:
        """The process that runs the proxy (gunicorn's worker, not its master)."""
        return int(self.info()["pid"])


def start_proxy(kind: str, log: Path, env: dict[str, str]) -> Proxy:
    """The hostile proxy apps (``apps/hostile_proxy_app.py``, ``hostile_proxy_wsgi_app.py``)
    under uvicorn with fastbody's ``kind`` protocol, or gunicorn with its ``kind`` worker."""
    port = free_port()
    if kind in PROTOCOLS:
        command = [sys.executable, "-m", "uvicorn", "hostile_proxy_app:app", "--app-dir", str(APPS)]
        command += ["--host", "127.0.0.1", "--port", str(port), "--ws", "none", "--no-proxy-headers"]
        command += ["--http", f"fastbody.integrations.uvicorn:{PROTOCOLS[kind]}"]
    else:
        command = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-b", f"127.0.0.1:{port}"]
        command += ["-w", "1", "-k", f"egg:fastbody#{kind}", "--chdir", str(APPS), "--timeout", "30"]
        # gunicorn turns a sync worker into gthread when given more than one thread.
        command += ["--threads", "4"] if kind == "gthread" else []
        command += ["hostile_proxy_wsgi_app:app"]
    server = launch(
        command, port, log / f"proxy-{kind}-{port}.log", env={"FASTBODY_SEND_TIMEOUT": "10", **env}
    )
    return Proxy(**{f.name: getattr(server, f.name) for f in fields(server)}, kind=kind)


def proxy_fixture(kinds: list[str], **upstreams: str) -> Any:
    """A module-scoped ``proxy`` fixture, one proxy process per kind in ``kinds``, its upstreams
    given as environment variable = fixture name (``RAW_UPSTREAM="upstream"``: ``/raw`` is
    proxied to the ``upstream`` fixture's server; ``RECORD_UPSTREAM``: ``/rec``)."""

    @pytest.fixture(scope="module", params=kinds)
    def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
        env = {var: request.getfixturevalue(name).url for var, name in upstreams.items()}
        running = start_proxy(request.param, tmp_path_factory.mktemp("hostile"), env)
        yield running
        stop(running)

    return proxy


@dataclass
class Got:
    status: int | None
    body: bytes
    complete: bool  # the response ended as framed (h11 saw its end)
    seconds: float
    error: str | None = None  # what h11 refused in the answer, if anything


def get(proxy: Server, path: str, prefix: str = "/raw") -> Got:
    """One request on a raw connection (``Connection: close``), read to the proxy's close."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        request = b"GET %s%s HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n"
        sock.sendall(request % (prefix.encode(), path.encode()))
        data = b""
        while got := sock.recv(65536):
            data += got
    seconds = time.monotonic() - started
    reading = h11_reads(data, eof=True)
    return Got(reading.status, reading.body, reading.complete, seconds, reading.error)


@dataclass
class Reading:
    """What h11, as a client, reads from an answer's bytes."""

    status: int | None  # the final status (None: no final head was read)
    body: bytes
    complete: bool  # the body ended as framed
    error: str | None  # what h11 refused, if anything
    informational: int = 0  # 1xx heads before the final one
    reusable: bool = False  # complete, kept alive, and no byte after it: a connection to pool
    rest: bytes = b""  # the bytes after a complete answer


def h11_reads(data: bytes, *, eof: bool) -> Reading:
    """The answer to a ``GET /`` as h11 reads ``data`` (then the connection's end, if ``eof``)."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "proxy")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    if eof:
        client.receive_data(b"")
    reading = Reading(None, b"", False, None)
    try:
        while (event := client.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
            if isinstance(event, h11.InformationalResponse):
                reading.informational += 1
            elif isinstance(event, h11.Response):
                reading.status = event.status_code
            elif isinstance(event, h11.Data):
                reading.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                reading.complete = True
                reading.rest = client.trailing_data[0]
                reading.reusable = client.their_state is h11.DONE and not reading.rest
                break
            elif isinstance(event, h11.ConnectionClosed):
                break
    except h11.RemoteProtocolError as error:
        reading.error = str(error) or type(error).__name__
    return reading


def idle(proxy: Server) -> int:
    """The proxy's idle pooled connections to its ``/raw`` upstream."""
    return int(proxy.info()["idle"])


def steady(pid: int) -> Held:
    """The process's holdings once two readings 0.1 s apart agree (a connection the server is
    closing, the ``/stats`` request's own, is not counted in a baseline)."""
    last = held(pid)
    for _ in range(50):
        time.sleep(0.1)
        now = held(pid)
        if (now.fds, now.pipes) == (last.fds, last.pipes):
            return now
        last = now
    return last


class LogMark:
    """What a server logged since this mark."""

    def __init__(self, server: Server) -> None:
        self.server, self.at = server, len(server.errors())

    def new(self) -> str:
        return self.server.errors()[self.at :]
