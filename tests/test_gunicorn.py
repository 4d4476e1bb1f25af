"""The gunicorn workers, end to end: real ``python -m gunicorn`` processes on 127.0.0.1, real
httpx and curl clients, bodies checked by sha256, and ``fastbody.stats()`` read from the worker
(the test apps' ``/stats`` route) to prove which path moved them."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("gunicorn")

from servers import (  # noqa: E402
    MIB,
    Server,
    answers,
    fetch,
    free_port,
    launch,
    make_certificate,
    moved,
    stop,
    wait_until,
)

APPS = Path(__file__).resolve().parent / "apps"
WORKERS = ["sync", "gthread"]


def start(
    tmp: Path,
    worker: str,
    *options: str,
    app: str = "wsgi_app:app",
    env: dict[str, str] | None = None,
    chdir: Path = APPS,
) -> Server:
    port = free_port()
    log, access_log = tmp / f"gunicorn-{port}.log", tmp / f"access-{port}.log"
    command = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-b", f"127.0.0.1:{port}", "-w", "1"]
    command += ["-k", f"egg:fastbody#{worker}", "--chdir", str(chdir), "--log-level", "info"]
    command += ["--access-logfile", str(access_log), "--access-logformat", "%(r)s %(s)s %(B)s"]
    if worker == "gthread":
        command += ["--threads", "4"]
    return launch([*command, *options, app], port, log, access_log, env=env or {})


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gunicorn")


@pytest.fixture(scope="module")
def certificate(tmp: Path) -> tuple[str, str]:
    return make_certificate(tmp)


@pytest.fixture(scope="module")
def blob(tmp: Path) -> tuple[str, str]:
    """A 64 MiB file of random bytes and its sha256."""
    path = tmp / "blob-64m.bin"
    data = os.urandom(64 * MIB)
    path.write_bytes(data)
    return str(path), hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module", params=WORKERS)
def server(request: pytest.FixtureRequest, tmp: Path) -> Iterator[Server]:
    running = start(tmp, request.param)
    yield running
    stop(running)


# Files


@pytest.mark.parametrize("app_length", [False, True], ids=["no-app-length", "app-length"])
def test_file_goes_by_sendfile(server: Server, blob: tuple[str, str], app_length: bool) -> None:
    path, digest = blob
    before = server.stats()
    got = fetch(f"{server.url}/file?path={path}" + ("&cl=1" if app_length else ""))
    assert (got.status, got.size, got.sha256) == (200, 64 * MIB, digest)
    assert got.headers["content-length"] == str(64 * MIB)
    assert "transfer-encoding" not in got.headers
    assert moved(before, server.stats()) == {"sendfile": 64 * MIB}
    # The access log shows the real count (stock gunicorn logs 0 for sendfile).
    wait_until(lambda: f"/file?path={path}" in server.access_log.read_text(), 10, "access log line")
    logged = [line for line in server.access_log.read_text().splitlines() if f"/file?path={path}" in line]
    assert logged[-1].endswith(f" 200 {64 * MIB}")


def test_file_from_its_position(server: Server, blob: tuple[str, str]) -> None:
    path, _ = blob
    skip = 64 * MIB - 100_000
    got = fetch(f"{server.url}/file?path={path}&skip={skip}")
    with open(path, "rb") as whole:
        whole.seek(skip)
        assert got.sha256 == hashlib.sha256(whole.read()).hexdigest()
    assert got.headers["content-length"] == "100000"


def test_small_file_in_one_write(server: Server, tmp: Path) -> None:
    small = tmp / "small.txt"
    small.write_bytes(b"tiny body\n")
    got = httpx.get(f"{server.url}/file?path={small}", timeout=30)
    assert (got.status_code, got.content, got.headers["content-length"]) == (200, b"tiny body\n", "10")


def test_empty_file(server: Server, tmp: Path) -> None:
    empty = tmp / "empty.bin"
    empty.write_bytes(b"")
    got = httpx.get(f"{server.url}/file?path={empty}", timeout=30)
    assert (got.status_code, got.content, got.headers["content-length"]) == (200, b"", "0")


def test_curl_gets_the_file(server: Server, blob: tuple[str, str], tmp: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    path, digest = blob
    out = tmp / f"curl-{server.port}.bin"
    subprocess.run(["curl", "-sSf", "-o", str(out), f"{server.url}/file?path={path}"], check=True, timeout=60)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest


# Sockets and pipes


@pytest.mark.parametrize("route", ["socket", "pipe"])
@pytest.mark.parametrize("length", [False, True], ids=["chunked", "length"])
def test_socket_and_pipe_bodies_go_by_splice(
    server: Server, blob: tuple[str, str], route: str, length: bool
) -> None:
    path, digest = blob
    before = server.stats()
    got = fetch(f"{server.url}/{route}?path={path}" + ("&length=1" if length else ""))
    assert (got.status, got.size, got.sha256) == (200, 64 * MIB, digest)
    if length:
        assert got.headers["content-length"] == str(64 * MIB)
        assert "transfer-encoding" not in got.headers
    else:
        assert got.headers["transfer-encoding"] == "chunked"  # Python writes the size lines only
    delta = moved(before, server.stats())
    assert sum(delta.values()) == 64 * MIB
    assert delta.get("splice", 0) >= 48 * MIB, delta


def test_pieces_are_chunks_moved_by_the_kernel(server: Server, blob: tuple[str, str]) -> None:
    path, _ = blob
    data = Path(path).read_bytes()
    before = server.stats()
    answer = httpx.get(f"{server.url}/pieces?path={path}", timeout=60)
    expected = b"<" + data[: len(data) // 2] + b"|" + data[len(data) // 2 :] + b">"
    assert answer.headers["transfer-encoding"] == "chunked"
    assert answer.content == expected
    delta = moved(before, server.stats())
    assert delta.get("splice", 0) >= len(data) // 2 - 64 * 1024  # the socket half
    assert delta.get("sendfile", 0) == len(data) - len(data) // 2  # the file half


def test_pieces_read_as_a_file() -> None:
    """Middleware or another server reading the wrapper gets the same bytes."""
    from fastbody.integrations.gunicorn import Pieces

    left, right = socket.socketpair()
    with left, right:
        right.sendall(b"socket-bytes and more")
        pieces = Pieces([b"a", (left, 12), b"", b"z"])
        got = b"".join(iter(lambda: pieces.read(5), b""))
    assert got == b"asocket-bytesz"


def test_unknown_length_over_http10_is_close_delimited(
    server: Server, blob: tuple[str, str], tmp: Path
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    path, digest = blob
    out, head = tmp / f"http10-{server.port}.bin", tmp / f"http10-{server.port}.head"
    before = server.stats()
    command = [
        "curl",
        "-sSf",
        "--http1.0",
        "-D",
        str(head),
        "-o",
        str(out),
        f"{server.url}/socket?path={path}",
    ]
    subprocess.run(command, check=True, timeout=60)
    headers = head.read_text().lower()
    assert headers.startswith("http/1.0 200")
    assert "connection: close" in headers
    assert "content-length" not in headers and "transfer-encoding" not in headers
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    assert moved(before, server.stats()).get("splice", 0) >= 48 * MIB


@pytest.mark.parametrize("stream", [False, True], ids=["seekable", "read-only"])
def test_file_like_without_fd_is_copied(server: Server, blob: tuple[str, str], stream: bool) -> None:
    path, digest = blob
    before = server.stats()
    got = fetch(f"{server.url}/file-like?path={path}" + ("&stream=1" if stream else ""))
    assert (got.status, got.sha256) == (200, digest)
    if stream:
        assert got.headers["transfer-encoding"] == "chunked"
    else:
        assert got.headers["content-length"] == str(64 * MIB)
    assert moved(before, server.stats()) == {"copy": 64 * MIB}


def test_length_caps_the_body_under_a_longer_content_length(server: Server, blob: tuple[str, str]) -> None:
    """``file_wrapper(f, length=N)`` never sends more than N bytes, whatever Content-Length the
    app declared: the body ends short and the connection closes."""
    path, _ = blob
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{server.url}/capped?path={path}&cl=50000&length=1000", timeout=30)
    wait_until(lambda: "body ended after 1000 of 50000 bytes" in server.errors(), 10, "short body logged")


# Connections


def test_keep_alive_after_zero_copy_response(tmp: Path, blob: tuple[str, str]) -> None:
    path, digest = blob
    running = start(tmp, "gthread", "--keep-alive", "10")
    try:
        with httpx.Client(timeout=60) as client:
            addresses = []
            for route in ("file", "socket", "file"):
                with client.stream("GET", f"{running.url}/{route}?path={path}") as answer:
                    digest_of = hashlib.sha256()
                    for chunk in answer.iter_raw(MIB):
                        digest_of.update(chunk)
                    assert answer.headers["connection"] == "keep-alive"
                    assert digest_of.hexdigest() == digest
                    stream = answer.extensions["network_stream"]
                    addresses.append(stream.get_extra_info("client_addr"))
            assert len(set(addresses)) == 1, addresses  # one connection served all three
    finally:
        stop(running)


def test_head_sends_no_body(server: Server, blob: tuple[str, str]) -> None:
    path, _ = blob
    before = server.stats()
    got = httpx.head(f"{server.url}/file?path={path}", timeout=30)
    assert got.status_code == 200
    assert got.headers["content-length"] == str(64 * MIB)  # what the GET would send
    assert got.content == b""
    assert moved(before, server.stats()) == {}


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
def test_no_body_statuses(server: Server, blob: tuple[str, str], status: str) -> None:
    path, _ = blob
    before = server.stats()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as client:
        client.sendall(
            f"GET /file?path={path}&status={status.replace(' ', '+')} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        client.shutdown(socket.SHUT_WR)
        answer = b""
        while data := client.recv(65536):
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}".encode()) and body == b""
    if status.startswith("204"):
        assert b"content-length" not in head.lower()
    assert moved(before, server.stats()) == {}


def test_truncated_file_closes_the_connection(server: Server, blob: tuple[str, str], tmp: Path) -> None:
    path, _ = blob
    copy = tmp / f"shrinking-{server.port}.bin"
    shutil.copyfile(path, copy)
    started = time.monotonic()
    with pytest.raises(httpx.RemoteProtocolError):  # peer closed before the whole message body
        fetch(f"{server.url}/file?path={copy}&cl=1&truncate={10 * MIB}")
    assert time.monotonic() - started < 20  # closed, not hung
    assert server.info()["pid"]  # the worker serves the next request
    wait_until(lambda: "body ended after 10485760 of 67108864 bytes" in server.errors(), 10, "error logged")


@pytest.mark.parametrize("route", ["file", "socket", "pipe"])
def test_client_disconnect_mid_body(server: Server, blob: tuple[str, str], route: str) -> None:
    path, _ = blob
    pid = server.info()["pid"]
    fetch(f"{server.url}/{route}?path={path}")  # settle lazily made fds (pipe pool, buffers)
    baseline = server.fds(pid)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as client:
        client.sendall(f"GET /{route}?path={path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = 0
        while received < 2 * MIB:
            received += len(client.recv(MIB))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    # The worker survives, answers, and holds no more fds than before.
    assert server.info()["pid"] == pid
    wait_until(lambda: server.fds(pid) <= baseline, 10, f"fd count back to {baseline}")


# Fallbacks


@pytest.mark.parametrize(
    ("options", "env"), [(("--no-sendfile",), {}), ((), {"SENDFILE": "0"})], ids=["no-sendfile", "SENDFILE=0"]
)
def test_sendfile_off_copies(
    tmp: Path, blob: tuple[str, str], options: tuple[str, ...], env: dict[str, str]
) -> None:
    path, digest = blob
    running = start(tmp, "sync", *options, env=env)
    try:
        for route in ("file", "socket"):
            before = running.stats()
            got = fetch(f"{running.url}/{route}?path={path}")
            assert got.sha256 == digest
            assert moved(before, running.stats()) == {"copy": 64 * MIB}
    finally:
        stop(running)


@pytest.mark.parametrize("worker", WORKERS)
def test_tls_copies(tmp: Path, blob: tuple[str, str], certificate: tuple[str, str], worker: str) -> None:
    path, digest = blob
    cert, key = certificate
    port = free_port()
    log = tmp / f"tls-{port}.log"
    command = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-b", f"127.0.0.1:{port}", "-w", "1"]
    command += ["-k", f"egg:fastbody#{worker}", "--chdir", str(APPS), "--certfile", cert, "--keyfile", key]
    with open(log, "wb") as output:
        process = subprocess.Popen([*command, "wsgi_app:app"], stdout=output, stderr=subprocess.STDOUT)
    running = Server(process, port, log, log)
    url = f"https://127.0.0.1:{port}"
    try:
        with httpx.Client(verify=False, timeout=60) as client:
            wait_until(lambda: answers(client, f"{url}/stats"), 30, "TLS server up")
            before = client.get(f"{url}/stats").json()["stats"]
            for route in ("file", "socket"):
                got = fetch(f"{url}/{route}?path={path}", client=client)
                assert got.sha256 == digest
            after = client.get(f"{url}/stats").json()["stats"]
            assert moved(before, after) == {"copy": 128 * MIB}
    finally:
        stop(running)


# Plain iterables: exactly as stock gunicorn


def _raw_exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(request)
        answer = b""
        while data := client.recv(65536):
            answer += data
    return b"\r\n".join(line for line in answer.split(b"\r\n") if not line.startswith(b"Date: "))


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_plain_iterable_as_stock(tmp: Path, version: str) -> None:
    request = f"GET /iterable HTTP/{version}\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    answers = []
    for worker in ("sync", "gthread"):
        running = start(tmp, worker)
        try:
            answers.append(_raw_exchange(running.port, request))
        finally:
            stop(running)
        stock = _stock(tmp, worker)
        try:
            answers.append(_raw_exchange(stock.port, request))
        finally:
            stop(stock)
    assert answers[0] == answers[1] and answers[2] == answers[3], answers
    chunked = b"7\r\nhello, \r\n6\r\nplain \r\n9\r\niterable\n\r\n0\r\n\r\n"
    body = chunked if version == "1.1" else b"hello, plain iterable\n"
    assert answers[0].endswith(b"\r\n\r\n" + body)


def _stock(tmp: Path, worker: str) -> Server:
    port = free_port()
    log = tmp / f"stock-{port}.log"
    command = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-b", f"127.0.0.1:{port}", "-w", "1"]
    command += ["-k", worker, "--chdir", str(APPS), "wsgi_app:app"]
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    running = Server(process, port, log, log)
    wait_until(lambda: answers(httpx, f"{running.url}/stats"), 30, "stock gunicorn up")
    return running


# Frameworks, unchanged


@pytest.mark.parametrize("framework", ["flask", "django"])
@pytest.mark.parametrize("worker", WORKERS)
def test_framework_file_responses_are_zero_copy(
    tmp: Path, blob: tuple[str, str], framework: str, worker: str
) -> None:
    pytest.importorskip(framework)
    path, digest = blob
    running = start(tmp, worker, app=f"{framework}_app:app")
    try:
        before = running.stats()
        got = fetch(f"{running.url}/file?path={path}")
        assert (got.status, got.sha256) == (200, digest)
        assert got.headers["content-length"] == str(64 * MIB)
        assert moved(before, running.stats()) == {"sendfile": 64 * MIB}
    finally:
        stop(running)


# Timeouts


def test_slow_client_is_not_killed(tmp: Path, blob: tuple[str, str]) -> None:
    """A 10-second transfer under ``--timeout 2``: the sync worker keeps its heartbeat going."""
    path, _ = blob
    size = 24 * MIB
    part = tmp / "part-24m.bin"
    with open(path, "rb") as whole:
        part.write_bytes(whole.read(size))
    running = start(tmp, "sync", "--timeout", "2")
    try:
        pid = running.info()["pid"]
        digest = hashlib.sha256()
        received = 0
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", running.port), timeout=30) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 << 10)
            client.sendall(f"GET /file?path={part} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += client.recv(1)
            rate = size / 10  # bytes per second: about 10 seconds in all
            while received < size:
                data = client.recv(256 << 10)
                if not data:
                    break
                digest.update(data)
                received += len(data)
                ahead = received / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        assert received == size
        assert digest.hexdigest() == hashlib.sha256(part.read_bytes()).hexdigest()
        assert time.monotonic() - started >= 8
        assert running.info()["pid"] == pid, running.errors()  # not killed and replaced
    finally:
        stop(running)


@pytest.mark.parametrize("worker", WORKERS)
def test_client_that_stops_reading_is_cut_off(tmp: Path, blob: tuple[str, str], worker: str) -> None:
    path, _ = blob
    running = start(tmp, worker, "--timeout", "2")
    try:
        pid = running.info()["pid"]
        with socket.create_connection(("127.0.0.1", running.port), timeout=30) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            client.sendall(f"GET /file?path={path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            wait_until(lambda: "no progress for 2.0 s" in running.errors(), 15, "client cut off")
            assert running.info()["pid"] == pid, running.errors()  # the worker moved on, not killed
        # A socket body whose upstream stops sending (length unknown, chunked): cut off as well.
        with pytest.raises(httpx.RemoteProtocolError):
            fetch(f"{running.url}/socket?path={path}&stall=30")
        cut = f"cut off after {64 * MIB} bytes of GET /socket"
        wait_until(lambda: cut in running.errors(), 10, "stalled source cut off")
        assert running.info()["pid"] == pid, running.errors()
    finally:
        stop(running)


# Big bodies


@pytest.mark.slow
@pytest.mark.parametrize("worker", WORKERS)
def test_one_gib_file(tmp: Path, worker: str) -> None:
    big = tmp / "blob-1g.bin"
    if not big.exists():
        with open(big, "wb") as out:
            block = os.urandom(16 * MIB)
            for _ in range(64):
                out.write(block)
    digest = hashlib.sha256()
    with open(big, "rb") as source:
        while chunk := source.read(16 * MIB):
            digest.update(chunk)
    running = start(tmp, worker)
    try:
        for app_length in ("", "&cl=1"):
            before = running.stats()
            got = fetch(f"{running.url}/file?path={big}{app_length}")
            assert (got.size, got.sha256) == (1 << 30, digest.hexdigest())
            assert moved(before, running.stats()) == {"sendfile": 1 << 30}
    finally:
        stop(running)


# The example


def test_example_app(tmp: Path) -> None:
    example = APPS.parent.parent / "examples"
    running = start(tmp, "gthread", app="gunicorn_app:app", chdir=example)
    try:
        file = running.get("/file")
        assert file.content == (example / "gunicorn_app.py").read_bytes()
        assert file.headers["content-length"] == str(len(file.content))
        pipe = running.get("/pipe")
        assert pipe.headers["transfer-encoding"] == "chunked"
        assert pipe.text == "".join(f"{n}\n" for n in range(1, 1_000_001))
        assert running.get("/stats").json()["splice"] > 0
    finally:
        stop(running)


def test_threads_given_to_the_sync_worker_are_named_in_a_warning(tmp: Path) -> None:
    """gunicorn swaps only a class named ...SyncWorker for gthread when --threads > 1; fastbody's
    sync worker keeps one request at a time, and says so rather than start without a word."""
    server = start(tmp, "sync", "--threads", "4")
    try:
        wait_until(lambda: "ignores --threads 4" in server.errors(), 10, "the warning logged")
        assert server.get("/stats").status_code == 200
    finally:
        stop(server)
    assert "WARNING" in server.errors()
