"""How static file servers answer the same requests: ``fastbody serve``, whitenoise (WSGI, under
gunicorn with fastbody's sync worker), nginx (when installed), servestatic (ASGI, under uvicorn
with fastbody's protocol) and Starlette's own StaticFiles (under stock uvicorn), over one tree,
for the requests of ``tests/test_static_comparison.py`` (plain, HEAD, Accept-Encoding, ranges,
conditionals, odd paths).

    .venv/bin/python benchmarks/static_behaviour.py [--out docs/static-comparison.md]

Prints one Markdown table (rows: requests; columns: servers; cells: ``status coding range``)
and writes it, with a header (date, versions), to ``docs/static-comparison.md``. Every server
runs on 127.0.0.1 and is stopped by its PID before the script exits; the whole run is bounded
(``--timeout``). Why the servers differ is written down in the test's ``EXPECTED`` table.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TESTS = REPO / "tests"
ROOT_ENV = "FASTBODY_COMPARE_ROOT"


# ---- the ASGI apps (uvicorn factories: ``static_behaviour:servestatic_app``) ------------------


async def not_found(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """What is not a static file: a plain 404 (the same as the whitenoise app's fallback)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b"Not Found"
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 404, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def servestatic_app() -> Any:
    """servestatic's ASGI app over ``$FASTBODY_COMPARE_ROOT``, as the whitenoise one."""
    from servestatic import ServeStaticASGI

    return ServeStaticASGI(not_found, root=os.environ[ROOT_ENV], index_file=True, max_age=60)


def starlette_app() -> Any:
    """Starlette's own StaticFiles over ``$FASTBODY_COMPARE_ROOT`` (html=True: index.html)."""
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    return Starlette(routes=[Mount("/", app=StaticFiles(directory=os.environ[ROOT_ENV], html=True))])


# ---- running the servers -----------------------------------------------------------------------


@contextmanager
def process(name: str, command: list[str], port: int, log: Path, env: dict[str, str]) -> Iterator[int]:
    """Run ``command`` until the block ends (SIGTERM to its PID, SIGKILL after 15 s); yields
    ``port`` once it accepts connections (within 30 s)."""
    from servers import accepts  # tests/servers.py (main puts tests/ on the path)

    with open(log, "wb") as output:
        child = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=log.parent
        )
    try:
        deadline = time.monotonic() + 30
        while not accepts(port):
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        yield port
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(10)


def uvicorn_app(factory: str, protocol: str | None, root: Path, tmp: Path, name: str) -> Any:
    from servers import free_port

    port = free_port()
    command = [sys.executable, "-m", "uvicorn", f"static_behaviour:{factory}", "--factory"]
    command += ["--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    if protocol is not None:
        command += ["--http", protocol]
    return process(name, command, port, tmp / f"{factory}.log", {ROOT_ENV: str(root)})


@contextmanager
def fastbody_serve(root: Path, tmp: Path) -> Iterator[int]:
    from test_static_comparison import start_fastbody, terminate

    command = start_fastbody(root, tmp)
    try:
        yield command.port
    finally:
        terminate(command)  # SIGTERM to its PID; it must exit by itself within 20 s


@contextmanager
def whitenoise(root: Path, tmp: Path) -> Iterator[int]:
    from servers import stop
    from test_static_comparison import start_whitenoise

    server = start_whitenoise(root, tmp)
    try:
        yield server.port
    finally:
        stop(server)


@contextmanager
def nginx(root: Path, tmp: Path) -> Iterator[int]:
    from test_static_comparison import start_nginx, stop_nginx

    server = start_nginx(root, tmp)
    try:
        yield server.port
    finally:
        stop_nginx(server)


# ---- the table ---------------------------------------------------------------------------------


def cell(found: dict[str, Any]) -> str:
    """``status [coding] [range]``: ``206 0-99/300000``, ``200 br``, ``206 multipart x2``."""
    words = [str(found["status"])]
    if found["encoding"]:
        words.append(found["encoding"])
    if found["range"]:
        words.append(found["range"].removeprefix("bytes "))
    if found["type"] == "multipart/byteranges":
        words.append(f"multipart x{len(found['body'])}")
    return " ".join(words)


def describe(request: Any) -> str:
    shown = [f"{name}: {value}" for name, value in request.headers if value != "identity"]
    if request.validator is not None:
        shown.append(f"{request.validator}: (its own)")
    headers = ", ".join(shown)
    text = f"`{request.method} {request.path}`" + (f" {headers}" if headers else "")
    return text.replace("|", "\\|")


def table(requests: list[Any], columns: dict[str, dict[str, dict[str, Any]]]) -> str:
    names = list(columns)
    lines = ["| request | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for request in requests:
        ours = cell(columns[names[0]][request.name])
        cells = []
        for name in names:
            text = cell(columns[name][request.name])
            cells.append(text if text == ours or name == names[0] else f"**{text}**")
        lines.append(f"| {request.name}: {describe(request)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def versions(nginx_path: str | None) -> str:
    found = [f"Python {platform.python_version()}"]
    for package in ["fastbody", "whitenoise", "servestatic", "starlette", "uvicorn", "gunicorn"]:
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            found.append(f"{package} (not installed)")
    if nginx_path is not None:
        done = subprocess.run([nginx_path, "-v"], capture_output=True, text=True, timeout=10)
        found.append(done.stderr.strip().removeprefix("nginx version: ").replace("/", " "))
    else:
        found.append("nginx (not installed: no column)")
    return ", ".join(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "static-comparison.md")
    parser.add_argument("--timeout", type=float, default=180, help="seconds for the whole run")
    args = parser.parse_args()
    # Not this directory: its uvicorn.py and gunicorn.py would shadow the servers' packages.
    sys.path[:] = [str(TESTS)] + [path for path in sys.path if Path(path or ".").resolve() != HERE]
    import test_static_comparison as compare

    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("run took too long")))
    signal.alarm(int(args.timeout))  # the ExitStack below still stops every server
    servers: dict[str, Callable[[Path, Path], Any]] = {
        "fastbody serve": fastbody_serve,
        "whitenoise (gunicorn, fastbody sync)": whitenoise,
    }
    if compare.NGINX is not None:
        servers["nginx (gzip_static)"] = nginx
    servers["servestatic (uvicorn, fastbody)"] = lambda root, tmp: uvicorn_app(
        "servestatic_app", "fastbody.integrations.uvicorn:AutoProtocol", root, tmp, "servestatic"
    )
    servers["Starlette StaticFiles (stock uvicorn)"] = lambda root, tmp: uvicorn_app(
        "starlette_app", None, root, tmp, "starlette"
    )
    columns: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="static-behaviour-") as scratch:
        tmp = Path(scratch)
        root = tmp / "site"
        root.mkdir()
        compare.build_tree(root)
        for name, start in servers.items():
            with ExitStack() as stack:
                port = stack.enter_context(start(root, tmp))
                answers, _ = compare.run_requests(port)
                columns[name] = {key: compare.record(answer) for key, answer in answers.items()}
            print(f"{name}: {len(answers)} requests", file=sys.stderr)
    signal.alarm(0)
    rows = table(compare.REQUESTS, columns)
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    document = f"""# Static files: the same requests, five servers

Generated {today} by `benchmarks/static_behaviour.py` on {platform.system()} {platform.machine()}:
{versions(compare.NGINX)}.

One tree (`build_tree` in `tests/test_static_comparison.py`: `app.css` with `.br`/`.gz` siblings,
`{compare.HASHED}` with a `.gz` only, `data.bin` of 300 000 bytes, an empty file, index.html in
`/` and `/sub/`, a `.env`; a secret `x` beside the root), one request per row over a raw socket
(`Accept-Encoding: identity` unless the row says otherwise). A cell is `status [Content-Encoding]
[Content-Range]`; **bold** where it differs from `fastbody serve`. nginx runs with
`gzip_static on; gzip_vary on;` (Debian's nginx has no `brotli_static`: never a .br). Why each
difference is expected is written in `EXPECTED` in `tests/test_static_comparison.py`, which
compares the full answers (media type, Vary, Content-Length, body) with whitenoise's and nginx's.

{rows}
"""
    print(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(document)
    print(f"written: {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
