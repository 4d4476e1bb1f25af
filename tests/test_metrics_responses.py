"""``fastbody_responses_total`` under fastbody's uvicorn protocol: each ASGI response counted
once, when it ends, however it ends (a chunked body of several pieces, a literal tail after a
file piece, HEAD, a short body, an upstream that resets mid-body through ReverseProxy)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client", reason="prometheus_client not installed (fastbody[metrics])")

from servers import RawServer, Server, start_uvicorn, stop, wait_until  # noqa: E402

APPS = Path(__file__).resolve().parent / "apps"


class ResettingUpstream(RawServer):
    """Answers every request with a 4 MB head and 256 KiB of its body, then resets."""

    def handle(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4000000\r\n\r\n" + b"u" * (256 << 10))
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


@pytest.fixture(scope="module", params=["h11", "httptools"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        pytest.skip("PROMETHEUS_MULTIPROC_DIR is set: this test reads one process's own counters")
    tmp = tmp_path_factory.mktemp("metrics-responses")
    data = tmp / "data.bin"
    data.write_bytes(os.urandom(300_000))
    upstream = ResettingUpstream()
    env = {"FASTBODY_TEST_FILE": str(data), "FASTBODY_TEST_UPSTREAM": str(upstream.port)}
    running = start_uvicorn("metrics_responses_app:app", APPS, tmp, request.param, "asyncio", env=env)
    yield running
    stop(running)
    upstream.close()


def responses(server: Server) -> dict[tuple[str, str], float]:
    text = httpx.get(f"{server.url}/m", timeout=10).text
    found = {}
    for line in text.splitlines():
        if line.startswith("fastbody_responses_total{"):
            labels, value = line.split("} ")
            pairs = dict(
                pair.split("=") for pair in labels.removeprefix("fastbody_responses_total{").split(",")
            )
            found[pairs["path"].strip('"'), pairs["outcome"].strip('"')] = float(value)
    return found


def counted(server: Server, request: Callable[[], object]) -> dict[tuple[str, str], float]:
    before = responses(server)
    request()
    after: dict[tuple[str, str], float] = {}

    def changed() -> bool:
        nonlocal after
        after = responses(server)
        return after != before

    wait_until(changed, 10, "the response counted")
    return {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}


def get(server: Server, path: str, method: str = "GET") -> None:
    with contextlib.suppress(httpx.HTTPError):  # a body cut short: the point of some of these
        httpx.request(method, f"{server.url}{path}", timeout=10)


@pytest.mark.parametrize(
    ("path", "method", "expected"),
    [
        ("/chunked", "GET", {("sendfile", "complete"): 1}),
        ("/parts", "GET", {("sendfile", "complete"): 1}),
        ("/file", "GET", {("sendfile", "complete"): 1}),
        ("/file", "HEAD", {("none", "complete"): 1}),
        ("/short", "GET", {("sendfile", "short_source"): 1}),
        ("/px/reset", "GET", {("splice", "upstream"): 1}),
    ],
)
def test_each_response_counted_once(
    server: Server, path: str, method: str, expected: dict[tuple[str, str], int]
) -> None:
    assert counted(server, lambda: get(server, path, method)) == expected
