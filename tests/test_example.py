"""The examples the README points to: they must keep working."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
from servers import accepts, fetch, free_port, launch, stop, wait_until

ROOT = Path(__file__).resolve().parent.parent


def test_serve_file_demo() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "serve_file.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("sha256 matches") == 3
    assert "'sendfile': 201326592" in result.stdout


@pytest.mark.parametrize("module", ["starlette_app", "fastapi_app"])
def test_asgi_examples_serve_zero_copy(tmp_path: Path, module: str) -> None:
    """The README's uvicorn examples, run as their docstrings say, move their files by sendfile."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "examples"), f"{module}:app"]
    command += ["--port", str(port), "--http", "fastbody.integrations.uvicorn:AutoProtocol"]
    server = launch(command, port, tmp_path / f"{module}.log")
    try:
        big = Path(tempfile.gettempdir()) / "fastbody-example-16m.bin"
        routes = ["/file", "/zero-copy", "/pipe"] if module == "starlette_app" else ["/download", "/video"]
        before = server.info_at("/stats")
        for route in routes:
            got = fetch(f"{server.url}{route}")
            assert (got.status, got.sha256) == (200, hashlib.sha256(big.read_bytes()).hexdigest()), route
        ranged = httpx.get(f"{server.url}{routes[1]}", headers={"Range": "bytes=0-99"}, timeout=30)
        assert (ranged.status_code, ranged.content) == (206, big.read_bytes()[:100])
        moved = server.info_at("/stats")
        assert moved["sendfile"] - before["sendfile"] >= 2 * big.stat().st_size
    finally:
        stop(server)


def test_proxy_example(tmp_path: Path) -> None:
    upstream_port, port = free_port(), free_port()
    (tmp_path / "index.txt").write_bytes(b"upstream\n")
    upstream = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(upstream_port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        command = [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "examples"), "proxy_app:app"]
        command += ["--port", str(port), "--http", "fastbody.integrations.uvicorn:AutoProtocol"]
        wait_until(lambda: accepts(upstream_port), 30, "upstream up")
        env = {"UPSTREAM": f"http://127.0.0.1:{upstream_port}"}
        server = launch(command, port, tmp_path / "proxy.log", env=env)
        try:
            assert httpx.get(f"{server.url}/api/index.txt", timeout=30).content == b"upstream\n"
        finally:
            stop(server)
    finally:
        upstream.terminate()
        upstream.wait(10)
