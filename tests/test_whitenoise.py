"""whitenoise, unchanged, under fastbody's gunicorn workers: every whitenoise feature kept
(precompressed siblings, Vary, Cache-Control, ranges, 304) and its bodies, ranges included,
moved by sendfile (``fastbody.stats()`` read from the worker)."""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("gunicorn")
pytest.importorskip("whitenoise")
brotli = pytest.importorskip("brotli")

from servers import MIB, Server, fetch, free_port, launch, moved, stop  # noqa: E402

APPS = Path(__file__).resolve().parent / "apps"
WORKERS = ["sync", "gthread"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``app.css`` (256 KiB of text) with its ``.gz`` and ``.br`` siblings, and 4 MiB of random
    bytes in ``big.bin``: every body past the size that is copied with the head."""
    root = tmp_path_factory.mktemp("whitenoise")
    css = os.urandom(128 << 10).hex().encode()
    (root / "app.css").write_bytes(css)
    (root / "app.css.gz").write_bytes(gzip.compress(css))
    (root / "app.css.br").write_bytes(brotli.compress(css))
    (root / "big.bin").write_bytes(os.urandom(4 * MIB))
    return root


@pytest.fixture(scope="module", params=WORKERS)
def server(request: pytest.FixtureRequest, root: Path) -> Iterator[Server]:
    port = free_port()
    log = root.parent / f"whitenoise-{request.param}-{port}.log"
    command = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-b", f"127.0.0.1:{port}", "-w", "1"]
    command += ["-k", f"egg:fastbody#{request.param}", "--chdir", str(APPS)]
    if request.param == "gthread":
        command += ["--threads", "4"]
    running = launch([*command, "whitenoise_app:app"], port, log, env={"WHITENOISE_ROOT": str(root)})
    yield running
    stop(running)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_plain_file(server: Server, root: Path) -> None:
    data = (root / "big.bin").read_bytes()
    before = server.stats()
    got = fetch(f"{server.url}/static/big.bin")
    assert (got.status, got.sha256) == (200, sha256(data))
    assert got.headers["content-length"] == str(len(data))
    assert got.headers["cache-control"] == "max-age=3600, public"
    assert "etag" in got.headers and "last-modified" in got.headers
    assert moved(before, server.stats()) == {"sendfile": len(data)}


@pytest.mark.parametrize(("coding", "suffix"), [("br", ".br"), ("gzip", ".gz")])
def test_precompressed_sibling(server: Server, root: Path, coding: str, suffix: str) -> None:
    encoded = (root / f"app.css{suffix}").read_bytes()
    before = server.stats()
    got = fetch(f"{server.url}/static/app.css", headers={"Accept-Encoding": coding})
    assert (got.status, got.sha256) == (200, sha256(encoded))  # the sibling's bytes, as stored
    assert got.headers["content-encoding"] == coding
    assert got.headers["content-type"].startswith("text/css")
    assert got.headers["vary"] == "Accept-Encoding"
    assert moved(before, server.stats()) == {"sendfile": len(encoded)}


def test_identity_when_nothing_is_accepted(server: Server, root: Path) -> None:
    css = (root / "app.css").read_bytes()
    got = fetch(f"{server.url}/static/app.css", headers={"Accept-Encoding": "identity"})
    assert (got.status, got.sha256) == (200, sha256(css))
    assert "content-encoding" not in got.headers


@pytest.mark.parametrize("spec", ["100-1000099", "-1000000"])
def test_range_goes_by_sendfile(server: Server, root: Path, spec: str) -> None:
    data = (root / "big.bin").read_bytes()
    start, _, end = spec.partition("-")
    first = int(start) if start else len(data) - int(end)
    last = int(end) if start else len(data) - 1
    before = server.stats()
    got = fetch(f"{server.url}/static/big.bin", headers={"Range": f"bytes={spec}"})
    assert (got.status, got.sha256) == (206, sha256(data[first : last + 1]))
    assert got.headers["content-range"] == f"bytes {first}-{last}/{len(data)}"
    assert moved(before, server.stats()) == {"sendfile": last + 1 - first}


def test_not_modified(server: Server) -> None:
    etag = httpx.head(f"{server.url}/static/big.bin", timeout=30).headers["etag"]
    before = server.stats()
    got = httpx.get(f"{server.url}/static/big.bin", headers={"If-None-Match": etag}, timeout=30)
    assert (got.status_code, got.content) == (304, b"")
    assert moved(before, server.stats()) == {}


def test_head(server: Server, root: Path) -> None:
    before = server.stats()
    got = httpx.head(f"{server.url}/static/big.bin", timeout=30)
    assert (got.status_code, got.content) == (200, b"")
    assert got.headers["content-length"] == str(4 * MIB)
    assert moved(before, server.stats()) == {}
