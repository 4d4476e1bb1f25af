"""The ``fastbody`` command through real subprocesses (``python -m fastbody``): serve a directory,
proxy a real upstream, bench, bad arguments, and SIGTERM leaving no process behind."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from servers import MIB, accepts, free_port, make_certificate, wait_until  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Command:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def fastbody(*args: str, tmp: Path, env: dict[str, str] | None = None) -> Command:
    """Start ``python -m fastbody ARGS --port P`` (with ``env`` added to the environment) and wait
    until it accepts connections."""
    port = free_port()
    log = tmp / f"fastbody-{port}.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "fastbody", *args, "--port", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the test can find every child
            env={**os.environ, **(env or {})},
        )
    command = Command(process, port, log)
    wait_until(lambda: accepts(port) or process.poll() is not None, 30, f"fastbody {args[0]} up")
    assert process.poll() is None, command.output()
    return command


def terminate(command: Command) -> str:
    """SIGTERM the command; it must exit by itself, leaving no process of its group behind."""
    group = os.getpgid(command.process.pid)
    command.process.send_signal(signal.SIGTERM)
    try:
        command.process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(group, signal.SIGKILL)
        raise AssertionError(f"did not exit on SIGTERM:\n{command.output()}") from None
    wait_until(lambda: not _group_alive(group), 10, "no process of the command left")
    return command.output()


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, bytes]]:
    """A directory to serve (a 16 MiB file, a subdirectory, a symlink leading out) and a secret
    file beside it that must never be served."""
    root = tmp_path / "site"
    (root / "sub").mkdir(parents=True)
    data = os.urandom(16 * MIB)
    (root / "big.bin").write_bytes(data)
    (root / "sub" / "small.txt").write_text("small\n")
    (tmp_path / "secret.txt").write_text("secret\n")
    (root / "out.txt").symlink_to(tmp_path / "secret.txt")
    yield root, data


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_serve_a_directory(site: tuple[Path, bytes], tmp_path: Path, server: str) -> None:
    root, data = site
    command = fastbody("serve", str(root), "--server", server, "--workers", "2", tmp=tmp_path)
    try:
        with httpx.Client(timeout=30) as client:
            got = client.get(f"{command.url}/big.bin")
            assert (got.status_code, sha(got.content)) == (200, sha(data))
            assert got.headers["content-length"] == str(len(data))
            ranged = client.get(f"{command.url}/big.bin", headers={"Range": "bytes=100-199"})
            assert (ranged.status_code, ranged.content) == (206, data[100:200])
            etag = got.headers["etag"]
            assert client.get(f"{command.url}/big.bin", headers={"If-None-Match": etag}).status_code == 304
            assert client.get(f"{command.url}/sub/small.txt").text == "small\n"
    finally:
        output = terminate(command)
    assert "zero-copy on this machine: sendfile yes" in output
    moved = [
        int(line.split("sendfile ")[1].split(",")[0]) for line in output.splitlines() if "bytes moved" in line
    ]
    assert sum(moved) >= len(data), output  # every worker reports when it stops


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/sub/",
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/sub/..%2f..%2fsecret.txt",
        "/out.txt",
        "/%2fetc/passwd",
    ],
)
def test_serve_never_escapes_or_lists(site: tuple[Path, bytes], tmp_path: Path, path: str) -> None:
    root, _ = site
    command = fastbody("serve", str(root), tmp=tmp_path)
    try:
        with socket.create_connection(("127.0.0.1", command.port), timeout=10) as client:
            client.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while data := client.recv(65536):
                answer += data
        assert answer.startswith(b"HTTP/1.1 404"), answer[:200]
        assert b"secret" not in answer
    finally:
        terminate(command)


def test_proxy_to_a_real_upstream(tmp_path: Path) -> None:
    data = os.urandom(8 * MIB)
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "blob.bin").write_bytes(data)
    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path / "up",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: accepts(port), 30, "upstream up")
        command = fastbody("proxy", f"http://127.0.0.1:{port}", tmp=tmp_path)
        try:
            got = httpx.get(f"{command.url}/blob.bin", timeout=30)
            assert (got.status_code, sha(got.content)) == (200, sha(data))
            assert httpx.get(f"{command.url}/missing", timeout=30).status_code == 404
        finally:
            output = terminate(command)
        line = next(line for line in output.splitlines() if "bytes moved" in line)
        assert int(line.split("splice ")[1].split(",")[0]) >= len(data), line
    finally:
        upstream.terminate()
        upstream.wait(10)


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastbody", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("command", [[], ["serve"], ["proxy"], ["bench"]])
def test_help(command: list[str]) -> None:
    done = _run(*command, "--help")
    assert done.returncode == 0
    assert "usage: fastbody" in done.stdout


def test_bad_arguments_give_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        taken = busy.getsockname()[1]
        closed = free_port()
        cases = {
            ("serve", str(tmp_path / "missing")): "no such directory",
            ("serve", str(tmp_path), "--port", str(taken)): "already in use",
            ("serve", str(tmp_path), "--port", "99999"): "not a port",
            ("proxy", f"http://127.0.0.1:{closed}"): "unreachable",
            ("proxy", "ftp://example.org"): "http:// URL",
            ("serve", str(tmp_path), "--workers", "0"): "at least 1",
            ("frobnicate",): "invalid choice",
        }
        for args, message in cases.items():
            done = _run(*args)
            assert done.returncode == 2, (args, done.stderr)
            assert message in done.stderr, (args, done.stderr)
            assert len(done.stderr.strip().splitlines()) == 1, (args, done.stderr)
            assert "Traceback" not in done.stderr


def test_bench_writes_a_table_and_a_chart(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "results"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "fastbody", "bench", "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = (out / "results.md").read_text()
    assert "| fastbody uvicorn |" in report and "| stock uvicorn |" in report
    assert "s/GiB" in report
    chart = (out / "results.png").read_bytes()
    assert chart.startswith(b"\x89PNG\r\n\x1a\n") and len(chart) > 10_000
    import matplotlib.image

    assert matplotlib.image.imread(out / "results.png").shape[0] > 200  # decodes as an image
    assert time.monotonic() - started < 600


# -- the server flags (each also a FASTBODY_* variable) and the command's own -------------------


def test_version() -> None:
    import importlib.metadata

    import fastbody as engine

    done = _run("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"fastbody {importlib.metadata.version('fastbody')}\n"
    assert engine.__version__ == importlib.metadata.version("fastbody")


def _one_line(done: subprocess.CompletedProcess[str], message: str) -> None:
    assert done.returncode == 2, done.stderr
    assert message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_bench_to_a_directory_it_cannot_write() -> None:
    _one_line(
        _run("bench", "--tiny", "--out", "/proc/fastbody-bench/out"), "fastbody bench: cannot use /proc/"
    )


def test_bad_server_flags_give_one_line(tmp_path: Path) -> None:
    (tmp_path / "not-a-cert.pem").write_text("hello\n")
    cases: list[tuple[tuple[str, ...], dict[str, str], str]] = [
        (("--log-level", "loud"), {}, "argument --log-level: not a log level"),
        ((), {"FASTBODY_LOG_LEVEL": "loud"}, "FASTBODY_LOG_LEVEL='loud': not a log level"),
        ((), {"FASTBODY_ACCESS_LOG": "maybe"}, "FASTBODY_ACCESS_LOG='maybe': not on or off"),
        (("--send-timeout", "soon"), {}, "argument --send-timeout: not a number of seconds"),
        (("--send-timeout", "-1"), {}, "seconds must be 0 (none) or more"),
        (("--keyfile", "key.pem"), {}, "--keyfile needs --certfile"),
        ((), {"FASTBODY_KEYFILE": "key.pem"}, "--keyfile needs --certfile"),
        (("--certfile", str(tmp_path / "missing.pem")), {}, "cannot use the certificate"),
        (("--certfile", str(tmp_path / "not-a-cert.pem")), {}, "cannot use the certificate"),
        (("--forwarded-allow-ips", " "), {}, "must not be empty"),
    ]
    for args, env, message in cases:
        _one_line(_run("serve", str(tmp_path), *args, env=env), message)
    _one_line(_run("proxy", "http://127.0.0.1:1", "--log-level", "loud"), "not a log level")


def test_a_missing_extra_names_the_precise_one(tmp_path: Path) -> None:
    for blocked, server, extra in [
        ("gunicorn", "gunicorn", "gunicorn"),
        ("uvicorn_worker", "gunicorn", "uvicorn"),
    ]:
        code = f"import sys; sys.modules[{blocked!r}] = None; from fastbody.integrations.cli import main;"
        code += f" main(['serve', {str(tmp_path)!r}, '--server', {server!r}])"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        _one_line(done, f"needs {blocked}: pip install 'fastbody[{extra}]'")


@pytest.mark.parametrize(
    ("server", "form"), [("uvicorn", "flags"), ("gunicorn", "flags"), ("uvicorn", "env")]
)
def test_tls(site: tuple[Path, bytes], tmp_path: Path, server: str, form: str) -> None:
    root, data = site
    cert, key = make_certificate(tmp_path)
    if form == "flags":
        command = fastbody(
            "serve", str(root), "--server", server, "--certfile", cert, "--keyfile", key, tmp=tmp_path
        )
    else:
        env = {"FASTBODY_CERTFILE": cert, "FASTBODY_KEYFILE": key}
        command = fastbody("serve", str(root), "--server", server, tmp=tmp_path, env=env)
    try:
        url = f"https://127.0.0.1:{command.port}"
        with httpx.Client(verify=False, timeout=30) as client:  # self-signed
            wait_until(lambda: _answers(client, f"{url}/sub/small.txt"), 30, "https answers")
            assert client.get(f"{url}/sub/small.txt").text == "small\n"
            got = client.get(f"{url}/big.bin")
            assert (got.status_code, sha(got.content)) == (200, sha(data))
        with pytest.raises(httpx.TransportError):  # plain HTTP is not spoken there
            httpx.get(f"http://127.0.0.1:{command.port}/sub/small.txt", timeout=10)
    finally:
        output = terminate(command)
    assert f"at https://127.0.0.1:{command.port}/" in output


def _answers(client: Any, url: str) -> bool:
    try:
        return bool(client.get(url).status_code == 200)
    except httpx.TransportError:
        return False


def _fetch_small(command: Command) -> None:
    with httpx.Client(timeout=30) as client:
        for _ in range(2):
            assert client.get(f"{command.url}/sub/small.txt").text == "small\n"


ACCESS_LINE = '"GET /sub/small.txt HTTP/1.1" 200'


@pytest.mark.parametrize(
    ("server", "args", "env", "logged"),
    [
        ("uvicorn", (), {}, True),
        ("uvicorn", ("--no-access-log",), {}, False),
        ("uvicorn", (), {"FASTBODY_ACCESS_LOG": "0"}, False),
        ("uvicorn", ("--access-log",), {"FASTBODY_ACCESS_LOG": "off"}, True),  # the flag wins
        ("gunicorn", (), {}, True),
        ("gunicorn", ("--no-access-log",), {}, False),
    ],
)
def test_access_log(
    site: tuple[Path, bytes],
    tmp_path: Path,
    server: str,
    args: tuple[str, ...],
    env: dict[str, str],
    logged: bool,
) -> None:
    root, _ = site
    command = fastbody("serve", str(root), "--server", server, *args, tmp=tmp_path, env=env)
    try:
        _fetch_small(command)
    finally:
        output = terminate(command)
    assert (ACCESS_LINE in output) is logged, output


@pytest.mark.parametrize(
    ("server", "args", "env"),
    [
        ("uvicorn", ("--log-level", "warning"), {}),
        ("uvicorn", (), {"FASTBODY_LOG_LEVEL": "WARNING"}),
        ("gunicorn", ("--log-level", "warning"), {}),
    ],
)
def test_log_level_warning(
    site: tuple[Path, bytes], tmp_path: Path, server: str, args: tuple[str, ...], env: dict[str, str]
) -> None:
    root, _ = site
    command = fastbody("serve", str(root), "--server", server, *args, tmp=tmp_path, env=env)
    try:
        _fetch_small(command)
    finally:
        output = terminate(command)
    assert "fastbody: serving" in output  # the command's own line, whatever the level
    assert "INFO" not in output and "[INFO]" not in output, output
    assert ACCESS_LINE not in output and "bytes moved" not in output, output


@pytest.mark.parametrize(
    ("args", "env"), [(("--send-timeout", "1"), {}), ((), {"FASTBODY_SEND_TIMEOUT": "1"})]
)
def test_send_timeout_cuts_off_a_client_that_stops_reading(
    site: tuple[Path, bytes], tmp_path: Path, args: tuple[str, ...], env: dict[str, str]
) -> None:
    root, data = site
    command = fastbody("serve", str(root), *args, tmp=tmp_path, env=env)
    try:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)  # a small window: the body stalls
        client.settimeout(15)
        with client:
            client.connect(("127.0.0.1", command.port))
            client.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            received = len(client.recv(65536))
            time.sleep(4)  # stop reading, well past the 1 s timeout
            started = time.monotonic()
            try:
                while chunk := client.recv(1 << 20):  # what the kernel still holds, then the end
                    received += len(chunk)
            except ConnectionResetError:
                pass
            assert time.monotonic() - started < 10  # cut off, not waiting for the default 60 s
        assert 0 < received < len(data)
    finally:
        output = terminate(command)
    assert "Traceback" not in output, output


@pytest.mark.parametrize(("server", "workers"), [("uvicorn", "1"), ("uvicorn", "2"), ("gunicorn", "2")])
def test_serve_metrics_port_adds_up_every_worker(
    site: tuple[Path, bytes], tmp_path: Path, server: str, workers: str
) -> None:
    """``--metrics-port``: the counters of every worker, scraped from the launcher (uvicorn, the
    one worker itself when there is one) or gunicorn's master, add up to the bytes served."""
    pytest.importorskip("prometheus_client", reason="prometheus_client not installed (fastbody[metrics])")
    root, data = site
    metrics = free_port()
    command = fastbody(
        "serve",
        str(root),
        "--server",
        server,
        "--workers",
        workers,
        "--metrics-port",
        str(metrics),
        tmp=tmp_path,
    )
    fetches = 6
    try:
        for _ in range(fetches):  # a connection each: both workers get some, most of the time
            with httpx.Client(timeout=30) as client:
                assert sha(client.get(f"{command.url}/big.bin").content) == sha(data)
        wait_until(lambda: accepts(metrics), 10, "the metrics port open")
        scrape = httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=10).text
    finally:
        output = terminate(command)
    assert "Traceback" not in output, output
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in scrape.splitlines()
        if line.startswith("fastbody_") and not line.startswith("#")
    }
    assert values['fastbody_body_bytes_total{path="sendfile"}'] == fetches * len(data), scrape
    assert values['fastbody_responses_total{outcome="complete",path="sendfile"}'] == fetches, scrape


def test_metrics_port_must_differ_from_the_servers(site: tuple[Path, bytes]) -> None:
    root, _ = site
    port = free_port()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastbody",
            "serve",
            str(root),
            "--port",
            str(port),
            "--metrics-port",
            str(port),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "is the server's own port" in result.stderr and "Traceback" not in result.stderr
