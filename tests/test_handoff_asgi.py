"""X-Sendfile and X-Accel-Redirect under fastbody's uvicorn protocols (issue 11, ASGI half): real
``python -m uvicorn`` processes (h11 and httptools) and a gunicorn uvicorn worker on 127.0.0.1,
real httpx and raw-socket clients, bodies checked by sha256 and ``fastbody.stats()`` read from the
server to prove the file went by sendfile."""

from __future__ import annotations

import hashlib
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from servers import (  # noqa: E402
    MIB,
    PROTOCOLS,
    Server,
    fetch,
    free_port,
    launch,
    moved,
    start_uvicorn,
    stop,
    wait_until,
)

from fastbody.integrations.files.representation import validators  # noqa: E402

APPS = Path(__file__).resolve().parent / "apps"
SIZE = 32 * MIB
APP_CHUNK = b"app body" * (8 << 10)  # the test app's own body message (64 KiB)


@dataclass(frozen=True)
class Tree:
    """``private/`` (X-Sendfile root, ``/protected/``), ``media/`` (both), ``outside/`` (neither)."""

    root: Path
    data: bytes

    @property
    def private(self) -> Path:
        return self.root / "private"

    @property
    def media(self) -> Path:
        return self.root / "media"

    @property
    def outside(self) -> Path:
        return self.root / "outside"

    @property
    def big(self) -> Path:
        return self.private / "big.bin"

    def env(self) -> dict[str, str]:
        return {
            "FASTBODY_XSENDFILE_ROOTS": f"{self.private}:{self.media}",
            "FASTBODY_ACCEL_REDIRECT": f"/protected/={self.private}/,/media/={self.media}/",
        }


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    found = Tree(tmp_path_factory.mktemp("handoff"), os.urandom(SIZE))
    for directory in (found.private, found.media, found.outside):
        directory.mkdir()
    found.big.write_bytes(found.data)
    (found.private / "empty.bin").write_bytes(b"")
    (found.private / "sub").mkdir()
    (found.media / "notes.txt").write_text("notes\n")
    (found.outside / "secret.txt").write_text("secret\n")
    (found.private / "leak").symlink_to(found.outside / "secret.txt")  # a symlink leading out
    return found


@pytest.fixture(scope="module", params=list(PROTOCOLS))
def server(request: pytest.FixtureRequest, tree: Tree) -> Iterator[Server]:
    running = start_uvicorn("handoff_asgi_app:app", APPS, tree.root, request.param, "asyncio", env=tree.env())
    yield running
    stop(running)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def route(**query: str | int) -> str:
    return "/hand?" + urlencode(query)


def sendfile_target(tree: Tree) -> dict[str, str]:
    return {"name": "X-Sendfile", "value": str(tree.big)}


ACCEL = {"name": "X-Accel-Redirect", "value": "/protected/big.bin"}


def validators_of(path: Path) -> tuple[str, str]:
    found = path.stat()
    return validators(found.st_size, found.st_mtime)


# The file, whole and in parts


@pytest.mark.parametrize("header", ["X-Sendfile", "X-Accel-Redirect"])
def test_the_named_file_goes_by_sendfile(server: Server, tree: Tree, header: str) -> None:
    target = sendfile_target(tree) if header == "X-Sendfile" else ACCEL
    before = server.stats()
    got = fetch(server.url + route(**target))
    assert (got.status, got.size, got.sha256) == (200, SIZE, sha(tree.data))
    assert got.headers["content-length"] == str(SIZE)
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["accept-ranges"] == "bytes"
    assert (got.headers["etag"], got.headers["last-modified"]) == validators_of(tree.big)
    assert "x-sendfile" not in got.headers and "x-accel-redirect" not in got.headers
    assert moved(before, server.stats()) == {"sendfile": SIZE}


def test_a_second_location_and_its_media_type(server: Server, tree: Tree) -> None:
    got = httpx.get(server.url + route(name="X-Accel-Redirect", value="/media/notes.txt"))
    assert (got.status_code, got.content) == (200, b"notes\n")
    assert got.headers["content-type"] == "text/plain; charset=utf-8"


def test_head_sends_the_head_only(server: Server, tree: Tree) -> None:
    before = server.stats()
    got = fetch(server.url + route(**ACCEL), method="HEAD")
    assert (got.status, got.size) == (200, 0)
    assert got.headers["content-length"] == str(SIZE)
    assert moved(before, server.stats()) == {}


def test_an_empty_file(server: Server) -> None:
    got = httpx.get(server.url + route(name="X-Accel-Redirect", value="/protected/empty.bin"))
    assert (got.status_code, got.content, got.headers["content-length"]) == (200, b"", "0")


def test_single_range(server: Server, tree: Tree) -> None:
    before = server.stats()
    got = fetch(server.url + route(**ACCEL), headers={"Range": f"bytes={MIB}-{2 * MIB - 1}"})
    assert (got.status, got.sha256) == (206, sha(tree.data[MIB : 2 * MIB]))
    assert got.headers["content-range"] == f"bytes {MIB}-{2 * MIB - 1}/{SIZE}"
    assert got.headers["content-length"] == str(MIB)
    assert moved(before, server.stats()) == {"sendfile": MIB}
    past = httpx.get(server.url + route(**ACCEL), headers={"Range": f"bytes={SIZE}-"})
    assert (past.status_code, past.content, past.headers["content-range"]) == (416, b"", f"bytes */{SIZE}")


def test_multipart_ranges(server: Server, tree: Tree) -> None:
    before = server.stats()
    spans = [(0, 65536), (MIB, MIB + 131072)]
    wanted = ",".join(f"{start}-{end - 1}" for start, end in spans)
    got = httpx.get(server.url + route(**ACCEL), headers={"Range": f"bytes={wanted}"})
    assert got.status_code == 206
    kind, _, boundary = got.headers["content-type"].partition("; boundary=")
    assert kind == "multipart/byteranges"
    assert int(got.headers["content-length"]) == len(got.content)
    pieces = got.content.split(f"--{boundary}".encode())
    assert pieces[0] == b"" and pieces[-1] == b"--"
    for piece, (start, end) in zip(pieces[1:-1], spans, strict=True):
        head, _, body = piece.partition(b"\r\n\r\n")
        assert f"Content-Range: bytes {start}-{end - 1}/{SIZE}".encode() in head
        assert body.removesuffix(b"\r\n") == tree.data[start:end]
    assert moved(before, server.stats()) == {"sendfile": 65536 + 131072}


def test_if_range(server: Server, tree: Tree) -> None:
    etag, _ = validators_of(tree.big)
    ranged = {"Range": f"bytes=0-{MIB - 1}"}
    matching = fetch(server.url + route(**ACCEL), headers={**ranged, "If-Range": etag})
    assert (matching.status, matching.sha256) == (206, sha(tree.data[:MIB]))
    stale = fetch(server.url + route(**ACCEL), headers={**ranged, "If-Range": '"stale"'})
    assert (stale.status, stale.sha256) == (200, sha(tree.data))


def test_conditionals(server: Server, tree: Tree) -> None:
    etag, last_modified = validators_of(tree.big)
    before = server.stats()
    fresh = httpx.get(server.url + route(**ACCEL), headers={"If-None-Match": etag})
    assert (fresh.status_code, fresh.content, fresh.headers["etag"]) == (304, b"", etag)
    dated = httpx.get(server.url + route(**ACCEL), headers={"If-Modified-Since": last_modified})
    assert dated.status_code == 304
    failed = httpx.get(server.url + route(**ACCEL), headers={"If-Match": '"other"'})
    assert (failed.status_code, failed.content) == (412, b"")
    assert moved(before, server.stats()) == {}


def test_the_apps_type_and_disposition_are_kept(server: Server, tree: Tree) -> None:
    """... and its ETag and Content-Length replaced by the file's, as nginx does."""
    disposition = 'attachment; filename="report.csv"'
    query = {**ACCEL, "type": "text/csv", "disposition": disposition, "etag": '"app"', "length": "5"}
    got = fetch(server.url + route(**query))
    assert (got.status, got.sha256) == (200, sha(tree.data))
    assert (got.headers["content-type"], got.headers["content-disposition"]) == ("text/csv", disposition)
    assert (got.headers["etag"], got.headers["content-length"]) == (validators_of(tree.big)[0], str(SIZE))


# What the app's status and body become


@pytest.mark.parametrize("status", [304, 204])
def test_bodiless_statuses_pass_through_without_the_header(server: Server, status: int) -> None:
    got = httpx.get(server.url + route(**ACCEL, status=status))
    assert (got.status_code, got.content) == (status, b"")
    assert "x-accel-redirect" not in got.headers


def test_other_statuses_send_the_file_whole(server: Server, tree: Tree) -> None:
    ranged = {"Range": "bytes=0-99"}
    got = fetch(server.url + route(**ACCEL, status=403), headers=ranged)
    assert (got.status, got.sha256) == (403, sha(tree.data))
    assert "content-range" not in got.headers


def test_a_206_from_the_app_is_answered_as_a_200(server: Server, tree: Tree) -> None:
    whole = fetch(server.url + route(**ACCEL, status=206))
    assert (whole.status, whole.sha256) == (200, sha(tree.data))
    ranged = fetch(server.url + route(**ACCEL, status=206), headers={"Range": f"bytes=-{MIB}"})
    assert (ranged.status, ranged.sha256) == (206, sha(tree.data[-MIB:]))


def test_the_apps_own_body_is_swallowed(server: Server, tree: Tree) -> None:
    """An app that sends a body anyway (many messages, headers as an iterator): the client gets
    the file; the connection carries the next request."""
    with httpx.Client(timeout=60) as client:
        for _ in range(2):  # one kept-alive connection
            got = fetch(server.url + route(**ACCEL, chunks=20, iterator=1), client=client)
            assert (got.status, got.sha256) == (200, sha(tree.data))
        small = client.get(server.url + route(name="X-Accel-Redirect", value="/media/notes.txt", chunks=3))
        assert small.content == b"notes\n"
    assert "Exception" not in server.errors() and "Traceback" not in server.errors()


# Refusals


REFUSED = [
    ("X-Accel-Redirect", "/protected/../outside/secret.txt", "leads outside"),
    ("X-Accel-Redirect", "/protected/%2e%2e/outside/secret.txt", "leads outside"),
    ("X-Accel-Redirect", "/protected/..%2foutside%2fsecret.txt", "leads outside"),
    ("X-Accel-Redirect", "/protected/leak", "leads outside"),
    ("X-Accel-Redirect", "/protected/missing.bin", "No such file"),
    ("X-Accel-Redirect", "/protected/sub", "not a regular file"),
    ("X-Accel-Redirect", "/elsewhere/big.bin", "under no"),
    ("X-Accel-Redirect", "/protected/%ff", "not UTF-8"),
    ("X-Sendfile", "{outside}/secret.txt", "leads outside"),
    ("X-Sendfile", "{private}/../outside/secret.txt", "leads outside"),
    ("X-Sendfile", "{private}/leak", "leads outside"),
    ("X-Sendfile", "{private}/missing.bin", "No such file"),
    ("X-Sendfile", "private/big.bin", "not an absolute path"),
]


@pytest.mark.parametrize(("name", "value", "why"), REFUSED, ids=[value for _, value, _ in REFUSED])
def test_refused_names_are_a_404_and_one_warning(
    server: Server, tree: Tree, name: str, value: str, why: str
) -> None:
    value = value.format(private=tree.private, outside=tree.outside)
    logged = server.errors().count("WARNING")
    got = httpx.get(server.url + route(name=name, value=value))
    assert (got.status_code, got.content) == (404, b"Not Found\n")
    assert name.lower() not in got.headers and b"secret" not in got.content
    wait_until(lambda: server.errors().count("WARNING") > logged, 10, "the warning logged")
    warnings = [line for line in server.errors().splitlines() if "WARNING" in line][logged:]
    assert len(warnings) == 1, warnings
    assert why in warnings[0] and "answered 404" in warnings[0] and "GET /hand" in warnings[0]


# The connection and the process


def test_client_disconnect_mid_body_leaks_no_fd(server: Server, tree: Tree) -> None:
    fetch(server.url + route(**ACCEL))  # settle lazily made fds
    baseline = server.info()["fds"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as client:
        client.sendall(f"GET {route(**ACCEL, chunks=4)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = 0
        while received < 2 * MIB:
            received += len(client.recv(MIB))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    wait_until(lambda: server.info()["fds"] <= baseline, 10, f"server fd count back to {baseline}")
    assert fetch(server.url + route(**ACCEL)).sha256 == sha(tree.data)
    assert "Traceback" not in server.errors()


@pytest.mark.parametrize("http", list(PROTOCOLS))
def test_unconfigured_headers_pass_through(tree: Tree, http: str) -> None:
    running = start_uvicorn("handoff_asgi_app:app", APPS, tree.root, http, "asyncio")
    try:
        for target in (ACCEL, sendfile_target(tree)):
            got = httpx.get(running.url + route(**target, chunks=2))
            assert (got.status_code, got.content) == (200, APP_CHUNK * 2)
            assert got.headers[target["name"]] == target["value"]
    finally:
        stop(running)


def test_a_malformed_setting_stops_the_server_at_startup(tree: Tree) -> None:
    with pytest.raises(AssertionError, match="is not a '/prefix/=/directory/' pair"):
        start_uvicorn(
            "handoff_asgi_app:app", APPS, tree.root, "h11", "asyncio", env={"FASTBODY_ACCEL_REDIRECT": "x"}
        )


def test_gunicorn_uvicorn_worker(tree: Tree) -> None:
    pytest.importorskip("uvicorn_worker")
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-b", f"127.0.0.1:{port}", "-w", "1"]
    command += ["-k", "egg:fastbody#uvicorn", "--chdir", str(APPS), "handoff_asgi_app:app"]
    running = launch(command, port, tree.root / f"gunicorn-{port}.log", env=tree.env())
    try:
        before = running.stats()
        got = fetch(running.url + route(**ACCEL))
        assert (got.status, got.sha256) == (200, sha(tree.data))
        assert "x-accel-redirect" not in got.headers
        assert moved(before, running.stats()) == {"sendfile": SIZE}
        refused = httpx.get(running.url + route(name="X-Sendfile", value=str(tree.outside / "secret.txt")))
        assert refused.status_code == 404
    finally:
        stop(running)
