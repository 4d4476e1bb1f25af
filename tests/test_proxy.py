"""The reverse proxy, end to end: the proxy under real ``python -m uvicorn`` (fastbody's h11 and
httptools protocols) and ``python -m gunicorn`` (fastbody's gthread worker) processes, a real
upstream (stock uvicorn serving ``apps/proxy_upstream_app.py``) and a raw-socket upstream in this
process for close-delimited bodies and malicious heads, real httpx and raw-socket clients on
127.0.0.1. Bodies are checked by sha256; ``fastbody.stats()`` read from the proxy proves splice
moved the big ones; the proxy's fd count (minus its idle pooled connections and pipes) proves
nothing leaks."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("gunicorn")
pytest.importorskip("starlette")

from servers import MIB, RawServer, Server, fetch, free_port, launch, moved, stop, wait_until  # noqa: E402

APPS = Path(__file__).resolve().parent / "apps"
KIB = 1 << 10
SIZES = [0, KIB, MIB, 64 * MIB]
SIZE_IDS = ["0B", "1KiB", "1MiB", "64MiB"]
KINDS = ["h11", "httptools", "gthread"]
PROTOCOLS = {"h11": "H11Protocol", "httptools": "HttpToolsProtocol"}


def sha(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"


# The raw-socket upstream: canned bytes per request path, one thread per connection


class RawUpstream(RawServer):
    """A raw-socket upstream answering each connection's request by its path (see ``answer``),
    then closing it. Every accept and recv is bounded; ``close`` stops it."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.go = threading.Event()  # /late-events sends its first event once this is set
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    got = conn.recv(65536)
                    if not got:
                        return
                    head += got
                target = head.split(b" ", 2)[1].decode()
                self.answer(conn, target)
            except OSError:
                pass  # the proxy closed first: that is what some cases test

    def answer(self, conn: socket.socket, target: str) -> None:
        parts = urlsplit(target)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        size = int(query.get("size", "0"))
        body = memoryview(self.data)[:size]
        heads = {
            "/dup-cl": b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            "/list-cl": b"Content-Length: 5, 5\r\n\r\nhello",
            "/conflict-cl": b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            "/cl-te": b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "/te-gzip": b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "/bad-chunk": b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            "/big-head": b"X-Big: " + b"a" * (100 * KIB) + b"\r\nContent-Length: 5\r\n\r\nhello",
        }
        ok = b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
        if parts.path in heads:
            conn.sendall(ok + heads[parts.path])
        elif parts.path == "/close":  # close-delimited: no length, no chunks, the end is the close
            conn.sendall(ok + b"\r\n")
            conn.sendall(body)
        elif parts.path == "/continue":
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n")
            conn.sendall(ok + b"Content-Length: 5\r\n\r\nhello")
        elif parts.path == "/hop":
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n"
                b"Proxy-Authenticate: Basic\r\nTrailer: X-T\r\nUpgrade: h2c\r\nX-End-To-End: yes\r\n"
                b"Content-Length: 5\r\n\r\nhello"
            )
        elif parts.path == "/short":  # Content-Length larger than what is sent, then the close
            conn.sendall(ok + b"Content-Length: %d\r\n\r\n" % (2 * size))
            conn.sendall(body)
        elif parts.path == "/short-chunk":  # a chunk that never ends
            conn.sendall(ok + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % (2 * size))
            conn.sendall(body)
        elif parts.path == "/bad-chunk-later":  # the head and a first chunk are out, then garbage
            conn.sendall(ok + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % size)
            conn.sendall(body)
            conn.sendall(b"\r\nzz\r\n" + b"x" * 100 + b"\r\n0\r\n\r\n")
        elif parts.path == "/late-events":  # an event stream whose first event waits for `go`
            conn.sendall(ok + b"Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            self.go.wait(10)
            conn.sendall(b"5\r\nhello\r\n0\r\n\r\n")
        elif parts.path == "/smuggle":
            # A kept-alive response whose body's end is a response head, sent after a pause: a
            # proxy that pooled this connection while the body was unfinished would hand the
            # tail to the next request as its response.
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (size + len(SMUGGLED)))
            conn.sendall(body)
            self.stopping.wait(1.5)
            conn.sendall(SMUGGLED)
        else:
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        conn.shutdown(socket.SHUT_WR)
        # Wait (bounded) for the proxy to close its side, so nothing is cut by our reset.
        with_deadline = time.monotonic() + 10
        while time.monotonic() < with_deadline and conn.recv(65536):
            pass


# Processes


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("proxy")


@pytest.fixture(scope="module")
def blob() -> bytes:
    return os.urandom(64 * MIB)


@pytest.fixture(scope="module")
def files(tmp: Path, blob: bytes) -> dict[int, tuple[str, str]]:
    """A file of each size (prefixes of ``blob``) and its sha256."""
    made = {}
    for size in SIZES:
        path = tmp / f"body-{size}.bin"
        path.write_bytes(blob[:size])
        made[size] = (str(path), sha(blob[:size]))
    return made


@pytest.fixture(scope="module")
def upstream(tmp: Path) -> Iterator[Server]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "proxy_upstream_app:app", "--app-dir", str(APPS)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--http", "h11", "--log-level", "warning"]
    running = launch(command, port, tmp / f"upstream-{port}.log")
    yield running
    stop(running)


@pytest.fixture(scope="module")
def raw(blob: bytes) -> Iterator[RawUpstream]:
    server = RawUpstream(blob)
    yield server
    server.close()


def closed_port() -> int:
    """A port nothing listens on (bound once, then released)."""
    return free_port()


def start_proxy(
    tmp: Path, kind: str, upstream: Server, raw: RawUpstream, loop: str = "asyncio", **env: str
) -> Server:
    port = free_port()
    environment = {
        "UPSTREAM": upstream.url,
        "RAW_UPSTREAM": raw.url,
        "DEAD_UPSTREAM": f"http://127.0.0.1:{closed_port()}",
        "FASTBODY_SEND_TIMEOUT": "10",
        **env,
    }
    log = tmp / f"proxy-{kind}-{loop}-{port}.log"
    if kind in PROTOCOLS:
        command = [sys.executable, "-m", "uvicorn", "proxy_app:app", "--app-dir", str(APPS)]
        command += ["--host", "127.0.0.1", "--port", str(port), "--loop", loop, "--ws", "none"]
        # uvicorn's default trusts X-Forwarded-For from 127.0.0.1 and makes it the scope's client.
        command += ["--no-proxy-headers"]
        command += ["--http", f"fastbody.integrations.uvicorn:{PROTOCOLS[kind]}"]
    else:
        command = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-b", f"127.0.0.1:{port}"]
        command += ["-w", "1", "-k", f"egg:fastbody#{kind}", "--chdir", str(APPS), "--timeout", "30"]
        command += ["--threads", "4"] if kind == "gthread" else []
        command += ["proxy_wsgi_app:app"]
    return launch(command, port, log, env=environment)


@pytest.fixture(scope="module", params=KINDS)
def proxy(request: pytest.FixtureRequest, tmp: Path, upstream: Server, raw: RawUpstream) -> Iterator[Server]:
    running = start_proxy(tmp, request.param, upstream, raw)
    running.kind = request.param  # type: ignore[attr-defined]
    yield running
    stop(running)


def held_fds(proxy: Server) -> int:
    """The proxy's open fds that are not idle pooled upstream connections or idle pooled pipes."""
    info = proxy.info()
    return int(info["fds"]) - sum(info["idle"].values()) - 2 * int(info["pipes"])


def settled_fds(proxy: Server) -> int:
    """``held_fds`` once it stops changing (the server has seen its last clients' closes)."""
    readings = [held_fds(proxy)]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.2)
        readings.append(held_fds(proxy))
        if readings[-1] == readings[-2]:
            break
    return readings[-1]


class LogMark:
    """What a server logged since this mark."""

    def __init__(self, server: Server) -> None:
        self.server, self.at = server, len(server.errors())

    def new(self) -> str:
        return self.server.errors()[self.at :]


def still_serves(proxy: Server, files: dict[int, tuple[str, str]]) -> None:
    path, digest = files[KIB]
    got = fetch(f"{proxy.url}/api/file?path={path}")
    assert (got.status, got.size, got.sha256) == (200, KIB, digest)


# Bodies


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_content_length_bodies(proxy: Server, files: dict[int, tuple[str, str]], size: int) -> None:
    path, digest = files[size]
    before = proxy.stats()
    got = fetch(f"{proxy.url}/api/file?path={path}")
    assert (got.status, got.size, got.sha256) == (200, size, digest)
    assert got.headers["content-length"] == str(size)
    assert got.headers["x-upstream"] == "file"
    if size >= MIB:
        assert moved(before, proxy.stats()).get("splice", 0) >= size


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_chunked_bodies(proxy: Server, files: dict[int, tuple[str, str]], size: int) -> None:
    """Each upstream chunk's data is spliced (ASGI: splicesend; WSGI: fastbody's Pieces)."""
    path, digest = files[size]
    before = proxy.stats()
    got = fetch(f"{proxy.url}/api/chunked?path={path}")
    assert (got.status, got.size, got.sha256) == (200, size, digest)
    assert "content-length" not in got.headers
    if size >= MIB:
        assert moved(before, proxy.stats()).get("splice", 0) >= size


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_close_delimited_bodies(proxy: Server, blob: bytes, size: int) -> None:
    before = proxy.stats()
    got = fetch(f"{proxy.url}/raw/close?size={size}")
    assert (got.status, got.size, got.sha256) == (200, size, sha(blob[:size]))
    if size >= MIB:
        # Pieces are what the upstream socket holds at each moment: most go by splice.
        assert moved(before, proxy.stats()).get("splice", 0) >= size // 2


@pytest.mark.slow
def test_one_gib_body(proxy: Server, tmp: Path, blob: bytes) -> None:
    path = tmp / "body-1g.bin"
    with open(path, "wb") as out:
        for _ in range(16):
            out.write(blob)
    before = proxy.stats()
    got = fetch(f"{proxy.url}/api/file?path={path}")
    assert (got.status, got.size) == (200, 1 << 30)
    digest = hashlib.sha256()
    for _ in range(16):
        digest.update(blob)
    assert got.sha256 == digest.hexdigest()
    assert moved(before, proxy.stats()).get("splice", 0) >= 1 << 30
    path.unlink()


# What is forwarded


def test_path_and_query_are_forwarded_as_encoded(proxy: Server) -> None:
    answer = httpx.get(f"{proxy.url}/api/echo/a%20b/c%2Fd?x=1&y=%20z%2F", timeout=30)
    assert answer.status_code == 200
    echo = answer.json()
    assert echo["raw_path"] == "/echo/a%20b/c%2Fd"  # the mount prefix stripped, encoding kept
    assert echo["query"] == "x=1&y=%20z%2F"


def test_encoded_mount_prefix_is_not_forwarded(proxy: Server) -> None:
    """``/%61pi`` is the ``/api`` mount too; its prefix must not reach the upstream either."""
    answer = httpx.get(f"{proxy.url}/%61pi/echo/x", timeout=30)
    assert answer.status_code == 200
    assert answer.json()["raw_path"] == "/echo/x"


def test_one_date_and_server_header(proxy: Server) -> None:
    """The server in front writes its own Date and Server: the upstream's are not forwarded."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as client:
        client.sendall(b"GET /api/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while data := client.recv(65536):
            answer += data
    names = [line.split(b":")[0].lower() for line in answer.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]]
    assert names.count(b"date") == 1 and names.count(b"server") <= 1, names


def test_request_headers(proxy: Server, upstream: Server) -> None:
    headers = {
        "Host": "example.test",
        "Connection": "X-Custom",
        "X-Custom": "1",
        "Keep-Alive": "300",
        "Proxy-Authorization": "Basic c2VjcmV0",
        "TE": "trailers",
        "X-Forwarded-For": "10.0.0.1",
        "X-End": "kept",
    }
    answer = httpx.get(f"{proxy.url}/api/echo", headers=headers, timeout=30)
    assert answer.status_code == 200
    received: dict[str, list[str]] = {}
    for name, value in answer.json()["headers"]:
        received.setdefault(name.lower(), []).append(value)
    for hop in ["x-custom", "keep-alive", "proxy-authorization", "te", "connection"]:
        assert hop not in received, hop
    assert received["x-end"] == ["kept"]
    assert received["host"] == [f"127.0.0.1:{upstream.port}"]  # the upstream's, as nginx does
    assert received["x-forwarded-for"] == ["10.0.0.1, 127.0.0.1"]
    assert received["x-forwarded-proto"] == ["http"]
    assert received["x-forwarded-host"] == ["example.test"]


def test_response_hop_by_hop_headers_are_removed(proxy: Server) -> None:
    answer = httpx.get(f"{proxy.url}/raw/hop", timeout=30)
    assert (answer.status_code, answer.content) == (200, b"hello")
    assert answer.headers["x-end-to-end"] == "yes"
    for hop in ["x-hop", "keep-alive", "proxy-authenticate", "trailer", "upgrade"]:
        assert hop not in answer.headers, hop
    assert "close" not in answer.headers.get("connection", "")  # the upstream's close is its own


def test_upload_with_content_length(proxy: Server, blob: bytes) -> None:
    body = blob[: 16 * MIB]
    answer = httpx.post(f"{proxy.url}/api/echo", content=body, timeout=60)
    assert answer.status_code == 200
    assert (answer.json()["length"], answer.json()["sha256"]) == (len(body), sha(body))
    assert answer.json()["method"] == "POST"


def test_chunked_upload(proxy: Server, blob: bytes) -> None:
    body = blob[: 4 * MIB + 123]

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(body), 100_000):
            yield body[start : start + 100_000]

    answer = httpx.put(f"{proxy.url}/api/echo", content=pieces(), timeout=60)
    assert answer.status_code == 200
    echo = answer.json()
    assert (echo["length"], echo["sha256"], echo["method"]) == (len(body), sha(body), "PUT")
    assert ["transfer-encoding", "chunked"] in [[n.lower(), v] for n, v in echo["headers"]]


def test_keep_alive_pool_is_reused(proxy: Server) -> None:
    def connections() -> int:
        return int(httpx.get(f"{proxy.url}/api/conns", timeout=30).json()["connections"])

    first = connections()
    with httpx.Client(timeout=30) as client:
        for _ in range(10):
            assert client.get(f"{proxy.url}/api/echo").status_code == 200
    assert connections() - first < 10
    assert connections() - first <= 2


# Bodiless responses, 1xx, upgrades


def test_head(proxy: Server, files: dict[int, tuple[str, str]]) -> None:
    path, _ = files[MIB]
    with httpx.Client(timeout=30) as client:
        answer = client.head(f"{proxy.url}/api/file?path={path}")
        assert (answer.status_code, answer.content) == (200, b"")
        assert answer.headers["content-length"] == str(MIB)
        still = client.get(f"{proxy.url}/api/echo")  # the same client connection goes on
        assert still.status_code == 200


@pytest.mark.parametrize("code", [204, 304])
def test_bodiless_statuses(proxy: Server, code: int) -> None:
    with httpx.Client(timeout=30) as client:
        answer = client.get(f"{proxy.url}/api/status?code={code}")
        assert (answer.status_code, answer.content) == (code, b"")
        assert answer.headers["etag"] == '"v1"'
        assert client.get(f"{proxy.url}/api/echo").status_code == 200


def test_informational_heads_are_skipped(proxy: Server) -> None:
    answer = httpx.get(f"{proxy.url}/raw/continue", timeout=30)
    assert (answer.status_code, answer.content) == (200, b"hello")


def test_upgrade_is_501(proxy: Server) -> None:
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"}
    headers["Sec-WebSocket-Key"] = "dGhlIHNhbXBsZSBub25jZQ=="
    answer = httpx.get(f"{proxy.url}/api/echo", headers=headers, timeout=30)
    assert answer.status_code == 501
    assert "upgrade" in answer.text.lower()


# Failures


def test_refused_upstream_is_502(proxy: Server) -> None:
    mark = LogMark(proxy)
    answer = httpx.get(f"{proxy.url}/dead/anything", timeout=30)
    assert answer.status_code == 502
    wait_until(lambda: "unreachable" in mark.new(), 5, "the refusal logged")


def test_slow_upstream_is_504(proxy: Server, files: dict[int, tuple[str, str]]) -> None:
    mark = LogMark(proxy)
    started = time.monotonic()
    answer = httpx.get(f"{proxy.url}/short/slow?delay=3", timeout=30)
    assert answer.status_code == 504
    assert time.monotonic() - started < 2.9
    wait_until(lambda: "no response from upstream" in mark.new(), 5, "the timeout logged")
    still_serves(proxy, files)


MALICIOUS = {
    "dup-cl": "duplicate Content-Length",
    "list-cl": "Content-Length",
    "conflict-cl": "Content-Length",
    "cl-te": "Transfer-Encoding",
    "te-gzip": "Transfer-Encoding",
    "bad-chunk": "chunk",
    "big-head": "larger than",
}


@pytest.mark.parametrize("case", list(MALICIOUS))
def test_malicious_upstream_is_502(proxy: Server, files: dict[int, tuple[str, str]], case: str) -> None:
    still_serves(proxy, files)
    baseline = held_fds(proxy)
    mark = LogMark(proxy)
    answer = httpx.get(f"{proxy.url}/raw/{case}", timeout=30)
    assert answer.status_code == 502, answer.content
    assert b"hello" not in answer.content
    wait_until(lambda: MALICIOUS[case].lower() in mark.new().lower(), 5, f"{case} logged")
    wait_until(lambda: held_fds(proxy) <= baseline, 10, "the upstream connection closed")
    still_serves(proxy, files)


def test_event_stream_head_is_not_held_for_its_first_event(proxy: Server, raw: RawUpstream) -> None:
    """The head goes out before the upstream's first chunk exists (an SSE stream may wait
    minutes for its first event); the event follows."""
    raw.go.clear()
    with httpx.Client(timeout=5) as client, client.stream("GET", f"{proxy.url}/raw/late-events") as answer:
        assert answer.status_code == 200  # the head came while the upstream still waits
        assert answer.headers["content-type"] == "text/event-stream"
        raw.go.set()
        assert answer.read() == b"hello"


def test_bad_chunk_after_the_head_closes_the_client(proxy: Server, files: dict[int, tuple[str, str]]) -> None:
    mark = LogMark(proxy)
    with pytest.raises(httpx.RemoteProtocolError):
        fetch(f"{proxy.url}/raw/bad-chunk-later?size={MIB}")
    wait_until(lambda: "chunk" in mark.new(), 5, "the bad chunk logged")
    still_serves(proxy, files)


@pytest.mark.parametrize("case", ["short", "short-chunk"])
def test_upstream_dying_mid_body_closes_the_client(
    proxy: Server, files: dict[int, tuple[str, str]], case: str
) -> None:
    """Never a short body passed off as complete; the proxy serves the next request."""
    with pytest.raises(httpx.RemoteProtocolError):
        fetch(f"{proxy.url}/raw/{case}?size={MIB}")
    still_serves(proxy, files)


def test_client_going_away_mid_body_leaks_nothing(proxy: Server, files: dict[int, tuple[str, str]]) -> None:
    path, _ = files[64 * MIB]
    still_serves(proxy, files)
    baseline = held_fds(proxy)
    client = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KIB)
    client.sendall(f"GET /api/file?path={path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    received = 0
    while received < 2 * MIB:
        got = client.recv(256 * KIB)
        assert got, "the proxy closed early"
        received += len(got)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # a reset, with 62 MiB unsent
    wait_until(lambda: held_fds(proxy) <= baseline, 15, "the proxy's fds back to their baseline")
    still_serves(proxy, files)
    wait_until(lambda: held_fds(proxy) <= baseline, 15, "the proxy's fds back to their baseline")


def test_client_gone_mid_body_never_pools_the_upstream_connection(proxy: Server, blob: bytes) -> None:
    """The client reads all the upstream has sent so far and resets while the upstream pauses:
    the upstream socket is empty at that moment, yet its body is unfinished, so the connection
    must be closed, not pooled (its tail would be read as the next request's response)."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as client:
        client.sendall(f"GET /raw/smuggle?size={MIB} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received:
            got = client.recv(65536)
            assert got, "the proxy closed early"
            received += got
        body = len(received) - received.index(b"\r\n\r\n") - 4
        while body < MIB:
            got = client.recv(min(MIB - body, 65536))
            assert got, "the proxy closed early"
            body += len(got)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(0.3)  # the proxy sees the reset; the upstream still pauses
    answer = httpx.get(f"{proxy.url}/raw/hop", timeout=30)
    assert (answer.status_code, answer.content) == (200, b"hello")


def test_fifty_concurrent_clients(proxy: Server, files: dict[int, tuple[str, str]]) -> None:
    path, digest = files[MIB]

    def one(_: int) -> tuple[int, int, str]:
        with httpx.Client(timeout=60) as client:
            got = fetch(f"{proxy.url}/api/file?path={path}", client=client)
        return got.status, got.size, got.sha256

    def round_of_50() -> None:
        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(one, range(50)))
        assert results == [(200, MIB, digest)] * 50

    round_of_50()  # warm-up: the pools of upstream connections and pipes fill
    baseline = settled_fds(proxy)
    round_of_50()
    wait_until(lambda: held_fds(proxy) <= baseline, 15, "the proxy's fds back to their baseline")


# Other servers: uvloop, gunicorn's sync worker


@pytest.mark.parametrize(("kind", "loop"), [("httptools", "uvloop"), ("sync", "asyncio")])
def test_smoke(
    tmp: Path,
    upstream: Server,
    raw: RawUpstream,
    files: dict[int, tuple[str, str]],
    blob: bytes,
    kind: str,
    loop: str,
) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    proxy = start_proxy(tmp, kind, upstream, raw, loop=loop)
    try:
        path, digest = files[64 * MIB]
        before = proxy.stats()
        got = fetch(f"{proxy.url}/api/file?path={path}")
        assert (got.status, got.size, got.sha256) == (200, 64 * MIB, digest)
        assert moved(before, proxy.stats()).get("splice", 0) >= 64 * MIB
        got = fetch(f"{proxy.url}/raw/close?size={MIB}")
        assert (got.status, got.size, got.sha256) == (200, MIB, sha(blob[:MIB]))
        assert httpx.get(f"{proxy.url}/dead/x", timeout=30).status_code == 502
        assert httpx.get(f"{proxy.url}/raw/conflict-cl", timeout=30).status_code == 502
        with pytest.raises(httpx.RemoteProtocolError):
            fetch(f"{proxy.url}/raw/short?size={MIB}")
        still_serves(proxy, files)
    finally:
        stop(proxy)
