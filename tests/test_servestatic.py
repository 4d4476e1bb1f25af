"""servestatic's ``ServeStaticASGI`` under fastbody's uvicorn protocols: servestatic 4.4 sends
``http.response.zerocopysend`` when the scope advertises it (whole files and single ranges), so
its bodies go by sendfile with no change on either side. Its features (precompressed siblings,
Vary, Cache-Control, ranges, 304, HEAD) are checked against servestatic under stock uvicorn,
answer for answer."""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import brotli  # type: ignore[import-untyped]
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("servestatic")

from servers import (  # noqa: E402
    MIB,
    PROTOCOLS,
    Fetched,
    Server,
    fetch,
    free_port,
    launch,
    moved,
    start_uvicorn,
    stop,
    wait_until,
)

APPS = Path(__file__).resolve().parent / "apps"
BLOB = 32 * MIB


@pytest.fixture(scope="module")
def static(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``blob.bin`` (random), ``text.txt`` (compressible) with ``.gz`` and ``.br`` siblings."""
    root = tmp_path_factory.mktemp("servestatic")
    directory = root / "static"
    directory.mkdir()
    (directory / "blob.bin").write_bytes(os.urandom(BLOB))
    text = os.urandom(2 * MIB).hex().encode()  # 4 MiB of hex digits: about half of it compresses away
    (directory / "text.txt").write_bytes(text)
    (directory / "text.txt.gz").write_bytes(gzip.compress(text))
    (directory / "text.txt.br").write_bytes(brotli.compress(text, quality=5))
    return directory


def env(static: Path) -> dict[str, str]:
    return {"FASTBODY_TEST_STATIC": str(static)}


@pytest.fixture(scope="module", params=list(PROTOCOLS))
def server(request: pytest.FixtureRequest, static: Path) -> Iterator[Server]:
    running = start_uvicorn(
        "servestatic_app:app", APPS, static.parent, request.param, "asyncio", env=env(static)
    )
    yield running
    stop(running)


@pytest.fixture(scope="module")
def stock(static: Path) -> Iterator[Server]:
    """servestatic under uvicorn's own h11 protocol: no extension advertised, its own reads."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "servestatic_app:app", "--app-dir", str(APPS)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--http", "h11"]
    running = launch(command, port, static.parent / f"stock-{port}.log", env=env(static))
    yield running
    stop(running)


def sha_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def same_as_stock(server: Server, stock: Server, target: str, method: str = "GET", **headers: str) -> Fetched:
    """The answer under fastbody's protocol, checked equal to stock uvicorn's (Date aside)."""
    got = fetch(server.url + target, method=method, headers=headers)
    expected = fetch(stock.url + target, method=method, headers=headers)
    assert (got.status, got.size, got.sha256) == (expected.status, expected.size, expected.sha256)
    ours, theirs = (
        {name: value for name, value in answer.headers.items() if name != "date"}
        for answer in (got, expected)
    )
    assert ours == theirs
    return got


def test_a_whole_file_goes_by_sendfile(server: Server, stock: Server, static: Path) -> None:
    before = server.stats()
    got = same_as_stock(server, stock, "/static/blob.bin")
    assert (got.status, got.sha256) == (200, sha_of(static / "blob.bin"))
    assert got.headers["content-length"] == str(BLOB)
    assert got.headers["cache-control"] == "max-age=60, public"
    assert moved(before, server.stats()) == {"sendfile": BLOB}


@pytest.mark.parametrize(
    ("accept", "coding", "sibling"), [("gzip", "gzip", ".gz"), ("gzip, br", "br", ".br")]
)
def test_precompressed_siblings(
    server: Server, stock: Server, static: Path, accept: str, coding: str, sibling: str
) -> None:
    before = server.stats()
    got = same_as_stock(server, stock, "/static/text.txt", **{"Accept-Encoding": accept})
    sent = static / f"text.txt{sibling}"
    assert (got.status, got.sha256) == (200, sha_of(sent))
    assert (got.headers["content-encoding"], got.headers["vary"]) == (coding, "Accept-Encoding")
    assert got.headers["content-type"].startswith("text/plain")
    assert moved(before, server.stats()) == {"sendfile": sent.stat().st_size}


def test_identity_when_no_coding_is_accepted(server: Server, stock: Server, static: Path) -> None:
    got = same_as_stock(server, stock, "/static/text.txt", **{"Accept-Encoding": "identity"})  # (not httpx's)
    assert got.sha256 == sha_of(static / "text.txt") and "content-encoding" not in got.headers
    assert got.headers["vary"] == "Accept-Encoding"


def test_range(server: Server, stock: Server, static: Path) -> None:
    before = server.stats()
    got = same_as_stock(server, stock, "/static/blob.bin", Range=f"bytes={MIB}-{2 * MIB - 1}")
    assert got.status == 206
    assert got.sha256 == hashlib.sha256((static / "blob.bin").read_bytes()[MIB : 2 * MIB]).hexdigest()
    assert got.headers["content-range"] == f"bytes {MIB}-{2 * MIB - 1}/{BLOB}"
    assert moved(before, server.stats()) == {"sendfile": MIB}


def test_unsatisfiable_range(server: Server, stock: Server) -> None:
    got = same_as_stock(server, stock, "/static/blob.bin", Range=f"bytes={BLOB}-")
    assert got.status == 416


def test_not_modified_and_head(server: Server, stock: Server) -> None:
    etag = fetch(server.url + "/static/blob.bin", method="HEAD").headers["etag"]
    before = server.stats()
    fresh = same_as_stock(server, stock, "/static/blob.bin", **{"If-None-Match": etag})
    assert (fresh.status, fresh.size) == (304, 0)
    head = same_as_stock(server, stock, "/static/blob.bin", method="HEAD")
    assert (head.status, head.size, head.headers["content-length"]) == (200, 0, str(BLOB))
    assert moved(before, server.stats()) == {}


def _leave_mid_body(server: Server) -> None:
    """Read 2 MiB of a 32 MiB body, then reset the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as client:
        client.sendall(b"GET /static/blob.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        received = 0
        while received < 2 * MIB:
            received += len(client.recv(MIB))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def test_client_disconnect_mid_body(server: Server, static: Path) -> None:
    """servestatic closes its file only after ``send`` returns; a client gone mid-body makes that
    ``send`` raise (an ``OSError``, as ASGI 2.4 says), and the file is freed with the failed
    request's frames: the fd count comes back once they are collected (``/stats?collect=1``)."""
    fetch(server.url + "/static/blob.bin")  # settle lazily made fds
    baseline = server.info_at("/stats?collect=1")["fds"]
    _leave_mid_body(server)
    wait_until(
        lambda: server.info_at("/stats?collect=1")["fds"] <= baseline,
        10,
        f"server fd count back to {baseline}",
    )
    assert fetch(server.url + "/static/blob.bin").sha256 == sha_of(static / "blob.bin")


def test_client_disconnect_mid_body_is_not_an_app_error(server: Server) -> None:
    """servestatic lets the OSError a send raises for a client gone mid-body out of its app (no
    try/except around send): uvicorn would log it as "Exception in ASGI application" with a
    traceback, but the server has logged that body in one line already and says it once."""
    logged = len(server.errors())
    _leave_mid_body(server)
    wait_until(lambda: "client went away" in server.errors()[logged:], 10, "the disconnect noticed")
    wait_until(lambda: server.info() is not None, 10, "still serving")
    assert "Exception in ASGI application" not in server.errors()[logged:]
