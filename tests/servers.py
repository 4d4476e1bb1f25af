"""Real server processes on 127.0.0.1 for the integration tests: start, wait until they answer,
read ``fastbody.stats()`` from them (their ``/stats`` route), fetch bodies by sha256, stop them."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

MIB = 1 << 20
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port`` now."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    access_log: Path
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def info(self) -> dict[str, Any]:
        with httpx.Client(verify=False, timeout=30) as client:
            answer = client.get(f"{self.url}/stats")
        answer.raise_for_status()
        return dict(answer.json())

    def info_at(self, route: str) -> dict[str, Any]:
        """The JSON a route of the server answers (an example's own ``/stats``)."""
        answer = httpx.get(f"{self.url}{route}", timeout=30)
        answer.raise_for_status()
        return dict(answer.json())

    def get(self, route: str) -> Any:
        return httpx.get(f"{self.url}{route}", timeout=30)

    def stats(self) -> dict[str, int]:
        return dict(self.info()["stats"])

    def fds(self, pid: int) -> int:
        return len(os.listdir(f"/proc/{pid}/fd"))

    def errors(self) -> str:
        return self.log.read_text(errors="replace")


def launch(
    command: list[str], port: int, log: Path, access_log: Path | None = None, **options: Any
) -> Server:
    """Start ``command`` (output to ``log``) and wait until its ``/stats`` answers."""
    env = {**os.environ, **options.pop("env", {})}
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    server = Server(process, port, log, access_log or log, **options)
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise AssertionError(f"{command[2]} exited with {process.returncode}:\n{server.errors()}")
        try:
            server.info()
            return server
        except httpx.TransportError:
            if time.monotonic() > deadline:
                stop(server)
                raise AssertionError(f"{command[2]} did not answer within 30 s:\n{server.errors()}") from None
            time.sleep(0.1)
        except BaseException:  # it answered, but not /stats (a 500): never leave it running
            stop(server)
            raise


def stop(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(10)


@dataclass
class Fetched:
    status: int
    headers: Any
    size: int
    sha256: str


def fetch(
    url: str, method: str = "GET", client: Any = None, headers: dict[str, str] | None = None
) -> Fetched:
    digest, size = hashlib.sha256(), 0
    with (client or httpx).stream(method, url, timeout=60, headers=headers) as answer:
        for chunk in answer.iter_raw(MIB):
            digest.update(chunk)
            size += len(chunk)
        return Fetched(answer.status_code, answer.headers, size, digest.hexdigest())


def moved(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {path: after[path] - before[path] for path in after if after[path] != before[path]}


def wait_until(condition: Callable[[], T], timeout: float, what: str) -> T:
    """What ``condition`` gives once it is true; an AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)
    return value


def make_certificate(directory: Path) -> tuple[str, str]:
    """A self-signed certificate and key for 127.0.0.1, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not installed (Debian package openssl)")
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    command += ["-subj", "/CN=127.0.0.1"]
    subprocess.run([*command, "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=60)
    return cert, key


def answers(client: Any, url: str) -> bool:
    try:
        return bool(client.get(url).status_code == 200)
    except httpx.TransportError:
        return False


class RawServer(ABC):
    """A listening socket on 127.0.0.1 served by a thread, one more thread per connection
    (``handle``, for a subclass to write). Every accept is bounded; ``close`` stops it all."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.handlers: list[threading.Thread] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @abstractmethod
    def handle(self, conn: socket.socket) -> None:
        """Answer one connection (on its own thread), then close it."""

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        for handler in self.handlers:
            handler.join(10)
        self.listener.close()
        assert not self.thread.is_alive()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            handler = threading.Thread(target=self.handle, args=(conn,), daemon=True)
            handler.start()
            self.handlers = [*(h for h in self.handlers if h.is_alive()), handler]


PROTOCOLS = {"h11": "H11Protocol", "httptools": "HttpToolsProtocol"}
"""fastbody's uvicorn protocol classes, by uvicorn's own name for the parser."""

UVICORN_CONFIGS = [(http, loop) for loop in ["asyncio", "uvloop"] for http in PROTOCOLS]


def start_uvicorn(
    app: str, app_dir: Path, tmp: Path, http: str, loop: str, *options: str, env: dict[str, str] | None = None
) -> Server:
    """``python -m uvicorn APP`` on fastbody's protocol for ``http`` and the ``loop``; skipped,
    with the reason shown, when uvloop is asked for and cannot be imported."""
    if loop == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop not installed")
    port = free_port()
    log = tmp / f"uvicorn-{http}-{loop}-{port}.log"
    command = [sys.executable, "-m", "uvicorn", app, "--app-dir", str(app_dir), "--port", str(port)]
    command += ["--host", "127.0.0.1", "--loop", loop]
    command += ["--http", f"fastbody.integrations.uvicorn:{PROTOCOLS[http]}"]
    scheme = "https" if "--ssl-certfile" in options else "http"
    return launch([*command, *options], port, log, env=env or {}, scheme=scheme)


def start_serve(directory: Path, logs: Path, *options: str, prefix: tuple[str, ...] = ()) -> Server:
    """``python -m fastbody serve DIRECTORY OPTIONS`` (one process: uvicorn runs in it, so it is
    the worker; ``prefix``: a command it runs under, such as prlimit), once it accepts connections."""
    port = free_port()
    log = logs / f"fastbody-serve-{port}.log"
    command = [*prefix, sys.executable, "-m", "fastbody", "serve", str(directory), "--port", str(port)]
    with open(log, "wb") as output:
        process = subprocess.Popen([*command, *options], stdout=output, stderr=subprocess.STDOUT)
    server = Server(process, port, log, log)
    try:
        wait_until(lambda: accepts(port) or process.poll() is not None, 30, "fastbody serve up")
        assert process.poll() is None, server.errors()
    except BaseException:
        stop(server)
        raise
    return server
