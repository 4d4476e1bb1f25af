"""fastbody's Starlette ``ZeroCopyResponse`` and ``StaticFiles`` end to end: ``tests/apps/zerocopy_app.py``
served by real ``python -m uvicorn`` processes (fastbody's h11 and httptools protocols, asyncio and
uvloop), fetched by httpx and raw sockets, bodies checked by sha256, and ``fastbody.stats()`` read
from the server to prove which path moved them (sendfile for files, splice for sockets and pipes,
nothing for iterators); then the same app in-process under Starlette's ``TestClient`` (fallback).

Bodies under ``fastbody.plan.SMALL_BODY`` (32 KiB) go by copy, so a stream sent in pieces of the
sizes its source had ready may count some bytes as ``copy``: those tests ask for ``splice`` >= 90 %
and ``splice + copy`` == the body (less at most the 64 KiB a chunked pipe's first buffered read
sends through the transport, which no counter sees).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

from servers import MIB, UVICORN_CONFIGS, Server, fetch, moved, start_uvicorn, stop, wait_until  # noqa: E402

import fastbody  # noqa: E402

APPS = Path(__file__).resolve().parent / "apps"
SIZE = 32 * MIB - 12_345  # not a multiple of any chunk size
SMALL_BODY = 32 * 1024
CONFIGS = UVICORN_CONFIGS
RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zerocopy")


@pytest.fixture(scope="module")
def blob(tmp: Path) -> tuple[str, bytes]:
    """A file of random bytes just under 32 MiB, also served as ``/static/blob.bin``."""
    data = os.urandom(SIZE)
    (tmp / "static").mkdir()
    path = tmp / "static" / "blob.bin"
    path.write_bytes(data)
    return str(path), data


@pytest.fixture(scope="module")
def tiny(tmp: Path, blob: tuple[str, bytes]) -> tuple[str, bytes]:
    """A 1000-byte file: a body that small goes by copy."""
    data = os.urandom(1000)
    path = tmp / "static" / "tiny.txt"
    path.write_bytes(data)
    return str(path), data


@pytest.fixture(scope="module", params=CONFIGS, ids=[f"{http}-{loop}" for http, loop in CONFIGS])
def server(
    request: pytest.FixtureRequest, tmp: Path, blob: tuple[str, bytes], tiny: tuple[str, bytes]
) -> Iterator[Server]:
    http, loop = request.param
    env = {"FASTBODY_TEST_STATIC": str(tmp / "static"), "FASTBODY_SEND_TIMEOUT": "2"}
    running = start_uvicorn("zerocopy_app:app", APPS, tmp, http, loop, env=env)
    yield running
    stop(running)
    assert "Traceback" not in running.errors(), running.errors()  # no exception in the app


def children(pid: int) -> list[str]:
    """The child processes of ``pid`` (zombies too), as ``name state``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if int(rest[1]) == pid:
            found.append(f"{name} {rest[0]}")
    return found


def parse_multipart(body: bytes, content_type: str) -> list[tuple[int, int, int, bytes]]:
    """The parts of a ``multipart/byteranges`` body as (first, last, size, bytes), read strictly:
    each part's length comes from its Content-Range, so a short or long part breaks the parse."""
    kind, _, boundary = content_type.partition("; boundary=")
    assert kind == "multipart/byteranges", content_type
    delimiter = b"--" + boundary.encode()
    parts, at = [], 0
    while True:
        assert body[at : at + len(delimiter)] == delimiter, (at, body[at : at + 80])
        at += len(delimiter)
        if body[at:] == b"--":
            return parts
        assert body[at : at + 2] == b"\r\n"
        head_end = body.index(b"\r\n\r\n", at)
        head = body[at + 2 : head_end].decode("latin-1")
        match = re.search(r"(?im)^content-range: bytes (\d+)-(\d+)/(\d+)$", head)
        assert match, head
        first, last, size = map(int, match.groups())
        start = head_end + 4
        parts.append((first, last, size, body[start : start + last - first + 1]))
        at = start + last - first + 1
        assert body[at : at + 2] == b"\r\n"
        at += 2


def assert_spliced(delta: dict[str, int], size: int, uncounted: int = 0) -> None:
    """Most bytes by splice; the rest (pieces under 32 KiB) by copy, except up to ``uncounted``
    bytes sent through the transport (counted nowhere); nothing else, never more."""
    moved_ = delta.get("splice", 0) + delta.get("copy", 0)
    assert delta.get("splice", 0) >= size * 0.9, delta
    assert size - uncounted <= moved_ <= size, delta
    assert delta.get("sendfile", 0) == 0, delta


# A path: FileResponse's statuses, by sendfile


def test_path_whole_file(server: Server, blob: tuple[str, bytes]) -> None:
    path, data = blob
    before = server.stats()
    got = fetch(f"{server.url}/path?path={path}")
    assert (got.status, got.size, got.sha256) == (200, len(data), sha(data))
    assert got.headers["content-length"] == str(len(data))
    assert got.headers["accept-ranges"] == "bytes"
    assert moved(before, server.stats()) == {"sendfile": len(data)}


def test_path_single_range(server: Server, blob: tuple[str, bytes]) -> None:
    path, data = blob
    first, last = 1000, 20 * MIB + 6
    before = server.stats()
    got = fetch(f"{server.url}/path?path={path}", headers={"Range": f"bytes={first}-{last}"})
    expected = data[first : last + 1]
    assert (got.status, got.size, got.sha256) == (206, len(expected), sha(expected))
    assert got.headers["content-range"] == f"bytes {first}-{last}/{len(data)}"
    assert got.headers["content-length"] == str(len(expected))
    assert moved(before, server.stats()) == {"sendfile": len(expected)}


def test_path_multipart_ranges(server: Server, blob: tuple[str, bytes]) -> None:
    path, data = blob
    # (first, last) inclusive, as in the header; the 100-byte one is small enough to be copied
    ranges = [(0, 99), (1 * MIB, 5 * MIB - 1), (10 * MIB + 3, 20 * MIB), (len(data) - MIB, len(data) - 1)]
    header = "bytes=" + ",".join(f"{first}-{last}" for first, last in ranges[:-1]) + f",-{MIB}"
    before = server.stats()
    answer = httpx.get(f"{server.url}/path?path={path}", headers={"Range": header}, timeout=60)
    delta = moved(before, server.stats())
    assert answer.status_code == 206
    assert answer.headers["content-length"] == str(len(answer.content))
    parts = parse_multipart(answer.content, answer.headers["content-type"])
    assert [(first, last, size) for first, last, size, _ in parts] == [(f, la, len(data)) for f, la in ranges]
    for first, last, _, body in parts:
        assert sha(body) == sha(data[first : last + 1]), (first, last)
    total = sum(last - first + 1 for first, last in ranges)
    # Boundaries go as body messages (not counted); each range by sendfile, or by copy if < 32 KiB.
    assert delta.get("sendfile", 0) + delta.get("copy", 0) == total, delta
    assert delta.get("sendfile", 0) >= total - len(ranges) * SMALL_BODY, delta
    assert delta.get("splice", 0) == 0, delta


def test_path_range_not_satisfiable(server: Server, blob: tuple[str, bytes]) -> None:
    path, data = blob
    before = server.stats()
    got = fetch(f"{server.url}/path?path={path}", headers={"Range": f"bytes={len(data)}-"})
    assert got.status == 416
    assert got.headers["content-range"] == f"bytes */{len(data)}"
    assert moved(before, server.stats()) == {}


@pytest.mark.parametrize("ranged", [False, True], ids=["whole", "range"])
def test_path_head(server: Server, blob: tuple[str, bytes], ranged: bool) -> None:
    path, data = blob
    headers = {"Range": "bytes=100-199"} if ranged else {}
    before = server.stats()
    got = fetch(f"{server.url}/path?path={path}", method="HEAD", headers=headers)
    assert (got.status, got.size) == ((206, 0) if ranged else (200, 0))
    assert got.headers["content-length"] == ("100" if ranged else str(len(data)))
    assert moved(before, server.stats()) == {}


# fastbody's StaticFiles


def test_static_files_by_sendfile(server: Server, blob: tuple[str, bytes]) -> None:
    _, data = blob
    before = server.stats()
    got = fetch(f"{server.url}/static/blob.bin")
    assert (got.status, got.size, got.sha256) == (200, len(data), sha(data))
    assert got.headers["etag"]
    assert moved(before, server.stats()) == {"sendfile": len(data)}


def test_static_files_range_by_sendfile(server: Server, blob: tuple[str, bytes]) -> None:
    """Starlette's own StaticFiles reads a range in Python: sendfile here proves the subclass."""
    _, data = blob
    before = server.stats()
    got = fetch(f"{server.url}/static/blob.bin", headers={"Range": "bytes=5000-4199999"})
    assert (got.status, got.sha256) == (206, sha(data[5000:4200000]))
    assert moved(before, server.stats()) == {"sendfile": 4200000 - 5000}


def test_static_files_not_modified(server: Server, blob: tuple[str, bytes]) -> None:
    etag = fetch(f"{server.url}/static/blob.bin", method="HEAD").headers["etag"]
    before = server.stats()
    got = fetch(f"{server.url}/static/blob.bin", headers={"If-None-Match": etag})
    assert (got.status, got.size) == (304, 0)
    assert got.headers["etag"] == etag
    assert moved(before, server.stats()) == {}
    stale = fetch(f"{server.url}/static/blob.bin", headers={"If-None-Match": '"stale"'})
    assert (stale.status, stale.size) == (200, len(blob[1]))


# A file object, a socket, a pipe, iterators


@pytest.mark.parametrize("pos,count", [(0, None), (1000, 20 * MIB + 7)], ids=["all", "pos-count"])
def test_file_object(server: Server, blob: tuple[str, bytes], pos: int, count: int | None) -> None:
    path, data = blob
    query = f"path={path}&pos={pos}" + ("" if count is None else f"&count={count}")
    expected = data[pos:] if count is None else data[pos : pos + count]
    before = server.stats()
    got = fetch(f"{server.url}/file?{query}")
    assert (got.status, got.size, got.sha256) == (200, len(expected), sha(expected))
    assert got.headers["content-length"] == str(len(expected))
    assert moved(before, server.stats()) == {"sendfile": len(expected)}


@pytest.mark.parametrize("route", ["socket", "pipe"])
@pytest.mark.parametrize("counted", [True, False], ids=["count", "chunked"])
def test_socket_and_pipe(server: Server, blob: tuple[str, bytes], route: str, counted: bool) -> None:
    path, data = blob
    before = server.stats()
    got = fetch(f"{server.url}/{route}?path={path}" + ("&count=1" if counted else ""))
    assert (got.status, got.size, got.sha256) == (200, len(data), sha(data))
    if counted:
        assert got.headers["content-length"] == str(len(data))
        assert "transfer-encoding" not in got.headers
    else:
        assert got.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in got.headers
    # A chunked pipe: the server first sends what Popen's buffered reader yields at once
    # (fastbody.buffered: one read1 of up to 64 KiB) through the transport, uncounted.
    uncounted = 64 * 1024 if route == "pipe" and not counted else 0
    assert_spliced(moved(before, server.stats()), len(data), uncounted)
    if route == "pipe":  # the background task reaped cat
        pid = server.info()["pid"]
        wait_until(lambda: not children(pid), 10, f"no children of the server: {children(pid)}")


@pytest.mark.parametrize("route", ["iter", "aiter"])
def test_iterators_are_copied(server: Server, blob: tuple[str, bytes], route: str) -> None:
    path, data = blob
    before = server.stats()
    got = fetch(f"{server.url}/{route}?path={path}")
    assert (got.status, got.size, got.sha256) == (200, len(data), sha(data))
    assert got.headers["transfer-encoding"] == "chunked"
    assert moved(before, server.stats()) == {}  # plain body messages: the engine moved nothing


# Connections


def test_keep_alive_after_zero_copy(server: Server, blob: tuple[str, bytes], tiny: tuple[str, bytes]) -> None:
    path, data = blob
    routes = [
        (f"/path?path={path}", {}, data),
        (f"/path?path={path}", {"Range": "bytes=0-99,1000000-2999999"}, None),  # multipart
        (f"/file?path={path}&pos=7", {}, data[7:]),
        (f"/socket?path={path}", {}, data),
        (f"/pipe?path={path}&count=1", {}, data),
        (f"/path?path={path}", {"Range": "bytes=-5000000"}, data[-5000000:]),
        (f"/path?path={tiny[0]}", {}, tiny[1]),  # a small one last: by copy
    ]
    peers = set()
    before = server.stats()
    with httpx.Client(timeout=60) as client:
        for route, headers, expected in routes:
            with client.stream("GET", server.url + route, headers=headers) as answer:
                body = answer.read()
                peer = answer.extensions["network_stream"].get_extra_info("client_addr")
            assert isinstance(peer, tuple), peer
            peers.add(peer)
            assert answer.status_code in (200, 206), route
            if expected is None:
                parts = parse_multipart(body, answer.headers["content-type"])
                assert [part[3] for part in parts] == [data[:100], data[1000000:3000000]]
            else:
                assert sha(body) == sha(expected), route
    assert len(peers) == 1, peers  # every response came on the one connection
    delta = moved(before, server.stats())
    assert delta.get("copy", 0) >= len(tiny[1]) + 100, delta  # the tiny file and the 100-byte range
    assert delta.get("sendfile", 0) >= 2 * len(data), delta


@pytest.mark.parametrize(
    "route,extra", [("path", ""), ("file", ""), ("socket", ""), ("pipe", ""), ("pipe", "&count=1")]
)
def test_client_disconnect_mid_body(server: Server, blob: tuple[str, bytes], route: str, extra: str) -> None:
    """The client resets the connection 2 MiB into a 32 MiB body: the server notices, the
    response closes what it opened (file, socket, pipe), cat is reaped, and the server still
    answers with its fd count back where it was."""
    path, data = blob
    target = f"/{route}?path={path}{extra}"
    assert fetch(server.url + target).sha256 == sha(data)  # settle lazily made fds (pipe pool)
    info = server.info()
    baseline, pid = info["fds"], info["pid"]
    before, log_size = server.stats(), len(server.errors())
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as client:
        client.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = 0
        while received < 2 * MIB:
            chunk = client.recv(MIB)
            assert chunk, f"connection closed after {received} bytes"
            received += len(chunk)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
    wait_until(lambda: server.info()["fds"] <= baseline, 10, f"server fd count back to {baseline}")
    wait_until(lambda: not children(pid), 10, f"no children of the server: {children(pid)}")
    # The engine stopped part way: the body was cut off at the server, not all queued in buffers
    # (a chunked pipe's first 64 KiB go through the transport, uncounted).
    cut = sum(moved(before, server.stats()).values())
    assert 2 * MIB - 64 * 1024 <= cut < len(data) - 4 * MIB, cut
    assert fetch(f"{server.url}/path?path={path}").sha256 == sha(data)
    assert "Traceback" not in server.errors()[log_size:], server.errors()[log_size:]


# The same app in-process, under Starlette's TestClient: no extensions, the fallback path


def load_app(static: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("zerocopy_app_in_process", APPS / "zerocopy_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.app = module.make_app(str(static))
    return module


@pytest.fixture(scope="module")
def test_client(tmp: Path, blob: tuple[str, bytes]) -> Iterator[Any]:
    from starlette.testclient import TestClient

    with TestClient(load_app(tmp / "static").app) as client:
        yield client


@pytest.mark.parametrize(
    "route,headers,status",
    [
        ("/path?path={path}", {}, 200),
        ("/path?path={path}", {"Range": "bytes=1000-3000999"}, 206),
        ("/file?path={path}&pos=1000&count=3000000", {}, 200),
        ("/socket?path={path}", {}, 200),
        ("/socket?path={path}&count=1", {}, 200),
        ("/pipe?path={path}", {}, 200),
        ("/pipe?path={path}&count=1", {}, 200),
        ("/iter?path={path}", {}, 200),
        ("/aiter?path={path}", {}, 200),
        ("/static/blob.bin", {"Range": "bytes=1000-3000999"}, 206),
    ],
)
def test_fallback_under_test_client(
    test_client: Any, blob: tuple[str, bytes], route: str, headers: dict[str, str], status: int
) -> None:
    path, data = blob
    expected = data[1000:3001000] if status == 206 or "pos=1000" in route else data
    before = fastbody.stats()
    answer = test_client.get(route.format(path=path), headers=headers)
    assert answer.status_code == status
    assert (len(answer.content), sha(answer.content)) == (len(expected), sha(expected))
    after = fastbody.stats()
    # Read in Python for the server to write: no kernel path; the engine counts what it read.
    assert (after["sendfile"], after["splice"]) == (before["sendfile"], before["splice"])
    if "iter" not in route:
        assert after["copy"] - before["copy"] >= len(expected)


def test_fallback_multipart_under_test_client(test_client: Any, blob: tuple[str, bytes]) -> None:
    path, data = blob
    answer = test_client.get(f"/path?path={path}", headers={"Range": "bytes=0-99,1000000-2999999"})
    assert answer.status_code == 206
    assert answer.headers["content-length"] == str(len(answer.content))
    parts = parse_multipart(answer.content, answer.headers["content-type"])
    assert [sha(part[3]) for part in parts] == [sha(data[:100]), sha(data[1000000:3000000])]
