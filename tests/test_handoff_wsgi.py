"""``X-Sendfile`` / ``X-Accel-Redirect`` under the gunicorn workers, and Flask's ``send_file``
answering a Range: real ``python -m gunicorn`` processes on 127.0.0.1, real httpx clients,
bodies checked by sha256 and ``fastbody.stats()`` read from the worker to prove the bytes went
by sendfile."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("gunicorn")

from servers import MIB, Server, fetch, free_port, launch, moved, stop, wait_until  # noqa: E402

from fastbody.integrations.files import representation  # noqa: E402

APPS = Path(__file__).resolve().parent / "apps"
WORKERS = ["sync", "gthread"]
sys.path.insert(0, str(APPS))
from handoff_wsgi_app import APP_BODY  # noqa: E402

WARNING = re.compile(r"\[WARNING\] fastbody: ")


def start(tmp: Path, worker: str, *options: str, app: str, env: dict[str, str]) -> Server:
    port = free_port()
    log = tmp / f"gunicorn-{worker}-{port}.log"
    command = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-b", f"127.0.0.1:{port}", "-w", "1"]
    command += ["-k", f"egg:fastbody#{worker}", "--chdir", str(APPS), "--log-level", "info"]
    if worker == "gthread":
        command += ["--threads", "4"]
    return launch([*command, *options, app], port, log, env=env)


@dataclass(frozen=True)
class Files:
    """The files a test server may hand off (``private``) and those it must never send."""

    private: Path
    outside: Path
    big: Path  # 4 MiB of random bytes in private/
    data: bytes

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def env(self) -> dict[str, str]:
        return {
            "FASTBODY_XSENDFILE_ROOTS": f"{self.private}:{self.private}/sub",
            "FASTBODY_ACCEL_REDIRECT": f"/protected/={self.private}/",
        }

    def etag(self) -> str:
        found = self.big.stat()
        return representation.validators(found.st_size, found.st_mtime)[0]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("handoff")


@pytest.fixture(scope="module")
def files(tmp: Path) -> Files:
    private, outside = tmp / "private", tmp / "outside"
    (private / "sub").mkdir(parents=True)
    outside.mkdir()
    data = os.urandom(4 * MIB)
    big = private / "big.bin"
    big.write_bytes(data)
    (private / "with space.bin").write_bytes(data[:100_000])
    (private / "notes.txt").write_bytes(b"some notes\n")
    (outside / "secret.txt").write_bytes(b"never sent\n")
    (private / "link-out").symlink_to(outside / "secret.txt")
    return Files(private, outside, big, data)


@pytest.fixture(scope="module", params=WORKERS)
def server(request: pytest.FixtureRequest, tmp: Path, files: Files) -> Iterator[Server]:
    running = start(tmp, request.param, app="handoff_wsgi_app:app", env=files.env())
    yield running
    stop(running)


def xsendfile(server: Server, path: Path | str, query: str = "") -> str:
    return f"{server.url}/xsendfile?path={path}{query}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# The file, whole


@pytest.mark.parametrize("header", ["x-sendfile", "x-accel-redirect"])
def test_the_named_file_goes_by_sendfile(server: Server, files: Files, header: str) -> None:
    url = (
        xsendfile(server, files.big)
        if header == "x-sendfile"
        else f"{server.url}/accel?uri=/protected/big.bin"
    )
    before = server.stats()
    got = fetch(url + "&ct=application/pdf")
    assert (got.status, got.size, got.sha256) == (200, len(files.data), files.digest)
    assert moved(before, server.stats()) == {"sendfile": len(files.data)}
    assert got.headers["content-length"] == str(len(files.data))
    assert got.headers["content-type"] == "application/pdf"  # the app's, kept
    assert got.headers["etag"] == files.etag()  # the file's, not the app's
    assert got.headers["last-modified"] != "Mon, 01 Jan 2001 00:00:00 GMT"
    assert got.headers["accept-ranges"] == "bytes"
    assert got.headers["set-cookie"] == "session=abc; Path=/"  # the app's own headers kept
    assert got.headers["cache-control"] == "private, max-age=60"
    assert "x-sendfile" not in got.headers and "x-accel-redirect" not in got.headers


def test_percent_encoded_accel_name(server: Server, files: Files) -> None:
    got = fetch(f"{server.url}/accel?uri=/protected/with%2520space.bin")
    assert (got.status, got.sha256) == (200, sha256(files.data[:100_000]))


def test_content_type_and_disposition(server: Server, files: Files) -> None:
    guessed = httpx.get(xsendfile(server, files.private / "notes.txt"), timeout=30)
    assert guessed.headers["content-type"] == "text/plain; charset=utf-8"  # none from the app
    assert guessed.content == b"some notes\n"
    disposition = 'attachment; filename="report.pdf"'
    named = httpx.get(xsendfile(server, files.big, f"&ct=application/pdf&cd={disposition}"), timeout=30)
    assert named.headers["content-disposition"] == disposition
    assert named.headers["content-type"] == "application/pdf"


def test_head(server: Server, files: Files) -> None:
    before = server.stats()
    got = httpx.head(xsendfile(server, files.big), timeout=30)
    assert (got.status_code, got.content) == (200, b"")
    assert got.headers["content-length"] == str(len(files.data))
    assert "x-sendfile" not in got.headers
    assert moved(before, server.stats()) == {}


# Ranges and conditionals


def test_single_range(server: Server, files: Files) -> None:
    before = server.stats()
    got = fetch(xsendfile(server, files.big), headers={"Range": "bytes=1000-2000999"})
    assert (got.status, got.sha256) == (206, sha256(files.data[1000:2001000]))
    assert got.headers["content-range"] == f"bytes 1000-2000999/{len(files.data)}"
    assert got.headers["content-length"] == "2000000"
    assert moved(before, server.stats()) == {"sendfile": 2_000_000}


def test_multipart_ranges(server: Server, files: Files) -> None:
    before = server.stats()
    got = httpx.get(
        f"{server.url}/accel?uri=/protected/big.bin", headers={"Range": "bytes=0-99999,-100000"}, timeout=30
    )
    assert got.status_code == 206
    boundary = got.headers["content-type"].partition("boundary=")[2]
    assert got.headers["content-type"].startswith("multipart/byteranges")
    size = len(files.data)
    expected = (
        f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Range: bytes 0-99999/{size}\r\n\r\n".encode()
        + files.data[:100_000]
        + f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Range: bytes {size - 100_000}-{size - 1}/{size}\r\n\r\n".encode()
        + files.data[-100_000:]
        + f"\r\n--{boundary}--".encode()
    )
    assert got.content == expected
    assert moved(before, server.stats())["sendfile"] == 200_000  # the boundaries are copied


def test_if_range(server: Server, files: Files) -> None:
    ranged = {"Range": "bytes=0-99999"}
    match = fetch(xsendfile(server, files.big), headers={**ranged, "If-Range": files.etag()})
    assert (match.status, match.sha256) == (206, sha256(files.data[:100_000]))
    stale = fetch(xsendfile(server, files.big), headers={**ranged, "If-Range": '"the-app-s-etag"'})
    assert (stale.status, stale.sha256) == (200, files.digest)


def test_not_modified_and_precondition_failed(server: Server, files: Files) -> None:
    before = server.stats()
    fresh = httpx.get(xsendfile(server, files.big), headers={"If-None-Match": files.etag()}, timeout=30)
    assert (fresh.status_code, fresh.content) == (304, b"")
    assert fresh.headers["etag"] == files.etag()
    assert "x-sendfile" not in fresh.headers
    failed = httpx.get(xsendfile(server, files.big), headers={"If-Match": '"not-it"'}, timeout=30)
    assert (failed.status_code, failed.content) == (412, b"")
    assert moved(before, server.stats()) == {}


def test_app_status(server: Server, files: Files) -> None:
    """1xx/204/304 pass with the header removed; another status sends the file whole with it."""
    passed = httpx.get(xsendfile(server, files.big, "&status=304+Not+Modified"), timeout=30)
    assert (passed.status_code, passed.content) == (304, b"")
    assert "x-sendfile" not in passed.headers
    assert passed.headers["etag"] == '"the-app-s-etag"'  # the app's 304, unchanged
    error_page = fetch(xsendfile(server, files.big, "&status=410+Gone"), headers={"Range": "bytes=0-9"})
    assert (error_page.status, error_page.sha256) == (410, files.digest)


# Refused names


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("x-sendfile", "{private}/../outside/secret.txt"),
        ("x-sendfile", "{private}/link-out"),
        ("x-sendfile", "{private}/missing.bin"),
        ("x-sendfile", "{private}/sub"),
        ("x-sendfile", "private/big.bin"),
        ("x-accel-redirect", "/protected/../outside/secret.txt"),
        ("x-accel-redirect", "/protected/%2e%2e/outside/secret.txt"),
        ("x-accel-redirect", "/protected/..%2Foutside%2Fsecret.txt"),
        ("x-accel-redirect", "/protected/link-out"),
        ("x-accel-redirect", "/protected/%ff.bin"),
        ("x-accel-redirect", "/protected/missing.bin"),
        ("x-accel-redirect", "/elsewhere/big.bin"),
    ],
    ids=lambda value: value.replace("{private}", "~"),
)
def test_refused_names_are_404(server: Server, files: Files, header: str, name: str) -> None:
    name = name.format(private=files.private)
    route = "xsendfile?path=" if header == "x-sendfile" else "accel?uri="
    warnings = len(WARNING.findall(server.errors()))
    got = httpx.get(f"{server.url}/{route}{quote(name, safe='/')}", timeout=30)
    assert got.status_code == 404
    assert b"never sent" not in got.content and APP_BODY not in got.content
    assert header not in got.headers
    wait_until(lambda: len(WARNING.findall(server.errors())) > warnings, 10, "a warning logged")
    lines = [line for line in server.errors().splitlines() if WARNING.search(line)]
    assert len(lines) == warnings + 1
    assert "answered 404" in lines[-1]


def test_lazy_start_response_passes_through(server: Server, files: Files) -> None:
    # The app's body goes as it is; its handoff header (an internal path) never reaches the client.
    warnings = len(WARNING.findall(server.errors()))
    got = httpx.get(f"{server.url}/lazy?path={files.big}", timeout=30)
    assert (got.status_code, got.content) == (200, APP_BODY)
    assert "x-sendfile" not in got.headers
    wait_until(lambda: len(WARNING.findall(server.errors())) > warnings, 10, "a warning logged")
    assert "dropped, not honoured" in server.errors()


# Connections and fds


def test_keep_alive_across_handoffs(tmp: Path, files: Files) -> None:
    running = start(tmp, "gthread", app="handoff_wsgi_app:app", env=files.env())
    try:
        with httpx.Client(timeout=30) as client:
            for headers in ({}, {"Range": "bytes=5-10"}, {"If-None-Match": files.etag()}, {}):
                got = client.get(xsendfile(running, files.big), headers=headers)
                assert got.status_code in (200, 206, 304)
                assert got.headers["connection"] == "keep-alive"
            head = client.head(xsendfile(running, files.big))
            missing = client.get(xsendfile(running, files.private / "missing"))
            assert (head.status_code, missing.status_code) == (200, 404)
            assert client.get(xsendfile(running, files.big)).content == files.data
    finally:
        stop(running)


def test_no_fd_left_open(server: Server, files: Files) -> None:
    pid = server.info()["pid"]
    fetch(xsendfile(server, files.big))  # settle lazily made fds
    baseline = server.fds(pid)
    for headers in ({}, {"Range": "bytes=0-10,20-30"}, {"If-None-Match": files.etag()}):
        fetch(xsendfile(server, files.big), headers=headers)
    httpx.head(xsendfile(server, files.big), timeout=30)
    httpx.get(xsendfile(server, files.private / "link-out"), timeout=30)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as client:  # gone mid-body
        client.sendall(f"GET /xsendfile?path={files.big} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        client.recv(65536)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    assert server.info()["pid"] == pid
    wait_until(lambda: server.fds(pid) <= baseline, 10, f"fd count back to {baseline}")


# Configuration


@pytest.mark.parametrize("worker", WORKERS)
def test_unset_passes_the_header_through(tmp: Path, files: Files, worker: str) -> None:
    running = start(tmp, worker, app="handoff_wsgi_app:app", env={})
    try:
        got = httpx.get(xsendfile(running, files.big), timeout=30)
        assert (got.status_code, got.content) == (200, APP_BODY)
        assert got.headers["x-sendfile"] == str(files.big)
        assert got.headers["etag"] == '"the-app-s-etag"'
    finally:
        stop(running)


def test_no_sendfile_copies(tmp: Path, files: Files) -> None:
    running = start(tmp, "sync", "--no-sendfile", app="handoff_wsgi_app:app", env=files.env())
    try:
        before = running.stats()
        got = fetch(xsendfile(running, files.big))
        assert (got.status, got.sha256) == (200, files.digest)
        ranged = fetch(xsendfile(running, files.big), headers={"Range": "bytes=100-1000099"})
        assert (ranged.status, ranged.sha256) == (206, sha256(files.data[100:1000100]))
        assert moved(before, running.stats()) == {"copy": len(files.data) + 1_000_000}
    finally:
        stop(running)


# Flask


@pytest.mark.parametrize("worker", WORKERS)
def test_flask_send_file_range_goes_by_sendfile(tmp: Path, files: Files, worker: str) -> None:
    pytest.importorskip("flask")
    running = start(tmp, worker, app="handoff_wsgi_app:flask_app", env={})
    try:
        before = running.stats()
        url = f"{running.url}/file?path={files.big}"
        got = fetch(url, headers={"Range": "bytes=1000-1001000"})
        assert (got.status, got.sha256) == (206, sha256(files.data[1000:1001001]))
        assert got.headers["content-range"] == f"bytes 1000-1001000/{len(files.data)}"
        assert got.headers["content-length"] == "1000001"
        open_ended = fetch(url, headers={"Range": f"bytes={len(files.data) - MIB}-"})
        assert (open_ended.status, open_ended.sha256) == (206, sha256(files.data[-MIB:]))
        assert moved(before, running.stats()) == {"sendfile": 1_000_001 + MIB}
    finally:
        stop(running)


@pytest.mark.parametrize("worker", WORKERS)
def test_flask_use_x_sendfile(tmp: Path, files: Files, worker: str) -> None:
    pytest.importorskip("flask")
    running = start(tmp, worker, app="handoff_wsgi_app:flask_xsendfile_app", env=files.env())
    try:
        before = running.stats()
        url = f"{running.url}/file?path={files.big}"
        got = fetch(url)
        assert (got.status, got.sha256) == (200, files.digest)
        assert got.headers["etag"] == files.etag()
        ranged = fetch(url, headers={"Range": "bytes=0-999999"})  # werkzeug's 206, redone
        assert (ranged.status, ranged.sha256) == (206, sha256(files.data[:1_000_000]))
        fresh = httpx.get(url, headers={"If-None-Match": files.etag()}, timeout=30)
        assert (fresh.status_code, fresh.content) == (304, b"")
        assert "x-sendfile" not in got.headers and "x-sendfile" not in fresh.headers
        assert moved(before, running.stats()) == {"sendfile": len(files.data) + 1_000_000}
    finally:
        stop(running)


# A file answer read by a server that does not know it (another server's file_wrapper)


def test_file_parts_read_as_a_file(files: Files) -> None:
    from fastbody.integrations.files import FileRange
    from fastbody.integrations.files.wsgi import FileParts

    with open(files.big, "rb") as file:
        body = FileParts(file, [b"<", FileRange(10, 100_000), b"|", FileRange(0, 5), b">"])
        read = b"".join(iter(lambda: body.read(8192), b""))
    assert read == b"<" + files.data[10:100_010] + b"|" + files.data[:5] + b">"
    assert body.length == len(read)
