"""The README's commands, run for real: its quick start (the first code block) from a copy of
this tree, and every ``fastbody ...``, ``gunicorn -k ...`` and ``uvicorn ... --http ...`` line it
shows elsewhere, parsed by the command itself or started and stopped.

Substitutions (the only ones; everything else is the README's own text):

- ``python3 -m venv .venv`` makes a venv from this interpreter that sees this environment's
  packages through a .pth file (``--system-site-packages`` would give the *base* interpreter's
  packages when the tests run in a venv, as CI's do), and ``.venv/bin/pip install [-q] -e
  '.[extras]'`` becomes ``.venv/bin/python -m pip install --no-deps --no-build-isolation -e .``:
  the extras are already here, and CI time has no network installs.
- ``fastbody serve`` gets ``--port P`` (a free port) and the curl URLs' ``:8000`` becomes ``:P``.
- ``.venv/bin/python -m pytest`` (the whole suite, which this test is part of) runs as
  ``--collect-only``.
- ``app:app`` is a small app written for the test (WSGI for the gunicorn workers, ASGI for the
  uvicorn ones); placeholders take values: ``DIR`` examples/static, ``URL`` an upstream URL,
  ``N`` 2, ``S`` 60; ``a|b`` alternatives each run.
"""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("httpx")
pytest.importorskip("gunicorn")
pytest.importorskip("uvicorn")

from servers import accepts, free_port, launch, stop, wait_until
from trees import ROOT, copy_source, venv_seeing_this_environment

README = (ROOT / "README.md").read_text()


def code_blocks(text: str) -> list[tuple[str, str]]:
    """The fenced blocks: (language, body)."""
    return re.findall(
        r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", text, re.S | re.M
    )  # (fences in lists are indented)


# The quick start


def quick_start() -> tuple[list[list[str]], list[str]]:
    """The first block's command lines (each split at ``&&``) and the curl commands it names."""
    _, body = code_blocks(README)[0]
    lines = [line for line in body.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    curls = re.findall(r"curl [^\n#]*[^\s#]", body)
    return [[step.strip() for step in line.split("&&")] for line in lines], curls


def test_quick_start_runs(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("the curl command is not installed (Debian package curl; .ci/run installs it)")
    tree = tmp_path / "fastbody"
    copy_source(tree)
    lines, curls = quick_start()
    assert curls, "the quick start names a file to fetch"
    served = False
    for line in lines:
        for step in line:
            words = shlex.split(step)
            if words[:3] == ["python3", "-m", "venv"]:
                venv_seeing_this_environment(tree / words[3])
            elif words[0].endswith("/pip") and words[1] == "install":
                assert words[-2:][0] == "-e" and words[-1].startswith("."), step
                python = Path(words[0]).parent / "python"
                command = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
                subprocess.run([*command, "-e", "."], cwd=tree, check=True, timeout=180)
            elif words[0].endswith("/fastbody") and words[1] == "serve":
                _serve_and_fetch(tree, words, curls, tmp_path)
                served = True
            elif words[0].endswith("/python") and words[1:3] == ["-m", "pytest"]:
                command = [str(tree / words[0]), *words[1:], "--collect-only", "-q", "-p", "no:cacheprovider"]
                collected = subprocess.run(command, cwd=tree, capture_output=True, text=True, timeout=300)
                assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
                assert re.search(r"\d+ tests? collected", collected.stdout), collected.stdout[-1000:]
            else:
                raise AssertionError(f"a quick-start step this test does not know how to run: {step}")
    assert served, "the quick start starts fastbody serve"


def _serve_and_fetch(tree: Path, words: list[str], curls: list[str], tmp: Path) -> None:
    port = free_port()
    log = tmp / "serve.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [str(tree / words[0]), *words[1:], "--port", str(port)],
            cwd=tree,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: accepts(port) or process.poll() is not None, 60, "fastbody serve up")
        assert process.poll() is None, log.read_text()
        directory = tree / words[2]
        expected = {"sendfile": 0, "copy": 0}
        for curl in curls:
            command = [*shlex.split(curl.replace(":8000/", f":{port}/")), "-sS", "-f", "-w", "\n%{http_code}"]
            fetched = subprocess.run(command, capture_output=True, text=True, timeout=60)
            assert fetched.returncode == 0, (curl, fetched.stderr)
            assert fetched.stdout.endswith("\n200"), (curl, fetched.stdout[-200:])
            name = curl.split(":8000/", 1)[1].split()[0]
            file = directory / name
            if "-o" not in curl.split():
                assert fetched.stdout[: -len("\n200")] == file.read_text(), curl
            # Small bodies leave with the head in one write (copy), bigger ones by sendfile.
            expected["sendfile" if file.stat().st_size >= 32 << 10 else "copy"] += file.stat().st_size
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C, as the README says
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    shown = log.read_text()
    assert process.returncode == 0, shown
    moved = re.search(r"bytes moved by this process: sendfile (\d+), splice (\d+), copy (\d+)", shown)
    assert moved, shown
    assert {"sendfile": int(moved[1]), "copy": int(moved[3])} == expected, shown


# Every fastbody / gunicorn / uvicorn command line shown elsewhere


def shown_commands(text: str) -> list[str]:
    """Command lines starting with fastbody, gunicorn or uvicorn: inline code spans, code-block
    lines (a synopsis' continuation lines joined), and the alternatives their comments give
    (``# or: -k X``, ``# or HttpToolsProtocol``). The quick start is tested above."""
    found: list[str] = []
    command = re.compile(r"(?:\.venv/bin/)?(fastbody|gunicorn|uvicorn) \S")
    outside = re.sub(r"^[ \t]*```.*?^[ \t]*```", "", text, flags=re.S | re.M)
    for span in re.findall(r"`([^`]+)`", outside):
        line = " ".join(span.split())
        if command.match(line):
            found.append(line)
    for language, body in code_blocks(text)[1:]:
        if language not in ("sh", ""):
            continue
        lines: list[str] = []
        for line in body.splitlines():
            if lines and re.match(r"\s+\[", line):  # a synopsis continued on the next line
                lines[-1] += " " + line.strip()
            elif command.match(line):
                lines.append(line)
        for line in lines:
            line, _, comment = line.partition(" #")  # egg:fastbody#sync has no space before #
            found.append(" ".join(line.split()))
            alternative = re.search(r"\bor:? (-k \S+)", comment)
            if alternative:
                found.append(re.sub(r"-k \S+", alternative[1], found[-1]))
            protocol = re.search(r"\bor (\w+Protocol)\b", comment)
            if protocol:
                found.append(re.sub(r":\w+Protocol\b", f":{protocol[1]}", found[-1]))
    return list(dict.fromkeys(found))


PLACEHOLDERS = {"DIR": "examples/static", "URL": "http://127.0.0.1:9", "UPSTREAM_URL": "http://127.0.0.1:9"}
PLACEHOLDERS |= {"N": "2", "S": "60", "LEVEL": "warning", "IPS": "127.0.0.1", "PEM": "cert.pem"}


def concrete(line: str) -> list[list[str]]:
    """The argv lists a shown line stands for: brackets dropped, ``--option ...`` dropped,
    placeholders filled, each ``a|b`` alternative."""
    words = shlex.split(line.replace("[", " ").replace("]", " "))
    words = [word.removeprefix(".venv/bin/") for word in words]
    kept: list[str] = []
    for word in words:
        if word == "...":
            if kept and kept[-1].startswith("-"):
                kept.pop()
            continue
        kept.append(PLACEHOLDERS.get(word, word))
    variants = [kept]
    for index, word in enumerate(kept):
        if "|" in word:
            prefix = word[: word.index("#") + 1] if "#" in word else ""
            choices = word.removeprefix(prefix).split("|")
            variants = [
                [*v[:index], prefix + choice, *v[index + 1 :]] for v in variants for choice in choices
            ]
    return variants


def _cases(program: str) -> list[str]:
    """The concrete lines for ``program``; a server line without an app gets ``app:app``."""
    cases = []
    for line in shown_commands(README):
        for argv in concrete(line):
            if argv[0] != program:
                continue
            if program in ("gunicorn", "uvicorn") and not any(":app" in word for word in argv):
                argv = [*argv, "app:app"]
            cases.append(" ".join(argv))
    return list(dict.fromkeys(cases))


def test_the_readme_shows_these_commands() -> None:
    """The lists below come from the README; an empty one would mean the parser broke."""
    for program in ("fastbody", "gunicorn", "uvicorn"):
        assert _cases(program), program
    assert "gunicorn -k fastbody.integrations.gunicorn:FastSync app:app" in _cases("gunicorn")


@pytest.mark.parametrize("line", _cases("fastbody"))
def test_fastbody_command_parses(line: str) -> None:
    from fastbody.integrations.cli import parser

    argv = shlex.split(line)[1:]
    if len(argv) == 1 and not argv[0].startswith("-"):  # a command named in prose: its --help
        argv.append("--help")
    try:
        parser().parse_args(argv)
    except SystemExit as exit:
        assert exit.code == 0, line  # --help


WSGI_APP = """
import json
import fastbody

def app(environ, start_response):
    if environ["PATH_INFO"] == "/stats":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(fastbody.stats()).encode()]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return environ["wsgi.file_wrapper"](open(__file__, "rb"))
"""

ASGI_APP = """
import fastbody
from starlette.applications import Starlette
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route

app = Starlette(routes=[
    Route("/file", lambda request: FileResponse(__file__)),
    Route("/stats", lambda request: JSONResponse(fastbody.stats())),
])
"""


def _check_started(command: list[str], port: int, tmp: Path) -> None:
    """Start it, fetch ``/file`` and see the engine moved it (``/stats``: with one worker, as
    the counts are per process), stop it."""
    workers = {"-w", "--workers"} & set(command)
    server = launch(command, port, tmp / f"server-{port}.log")
    try:
        before = server.info_at("/stats")
        answer = server.get("/file")
        assert answer.status_code == 200, server.errors()
        assert answer.headers.get("content-length") == str(len(answer.content))  # stock gunicorn chunks
        after = server.info_at("/stats")
        if not workers:
            assert sum(after.values()) - sum(before.values()) >= len(answer.content), server.errors()
    finally:
        stop(server)


def _apps(tmp: Path) -> tuple[Path, Path]:
    wsgi, asgi = tmp / "wsgi", tmp / "asgi"
    for folder, source in ((wsgi, WSGI_APP), (asgi, ASGI_APP)):
        folder.mkdir(exist_ok=True)
        (folder / "app.py").write_text(source)
    return wsgi, asgi


@pytest.mark.parametrize("line", _cases("gunicorn"))
def test_gunicorn_command_starts(line: str, tmp_path: Path) -> None:
    wsgi, asgi = _apps(tmp_path)
    words = shlex.split(line)[1:]
    worker = words[words.index("-k") + 1]
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-b", f"127.0.0.1:{port}"]
    if "--chdir" in words:  # the README's --chdir examples: from the repository's root
        words[words.index("--chdir") + 1] = str(ROOT / words[words.index("--chdir") + 1])
    else:
        command += ["--chdir", str(asgi if "uvicorn" in worker.lower() else wsgi)]
    _check_started([*command, *words], port, tmp_path)


@pytest.mark.parametrize("line", _cases("uvicorn"))
def test_uvicorn_command_starts(line: str, tmp_path: Path) -> None:
    _, asgi = _apps(tmp_path)
    words = shlex.split(line)[1:]
    assert "--http" in words, line
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(asgi), "--port", str(port), *words]
    _check_started(command, port, tmp_path)


# gunicorn's colon form, whatever the README says about it


@pytest.mark.parametrize("worker", ["FastSync", "FastThread"])
def test_gunicorn_colon_form(worker: str, tmp_path: Path) -> None:
    """``-k fastbody.integrations.gunicorn:FastSync`` crashed gunicorn 27's arbiter with
    ``TypeError: 'str' object is not callable``: it splits worker strings at dots only, asked
    ``fastbody.integrations`` for ``gunicorn:FastSync``, and its ``Config.__getattr__`` turned
    the AttributeError into the string itself."""
    wsgi, _ = _apps(tmp_path)
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-b", f"127.0.0.1:{port}"]
    command += ["-k", f"fastbody.integrations.gunicorn:{worker}", "--chdir", str(wsgi), "app:app"]
    _check_started(command, port, tmp_path)


def test_gunicorn_colon_form_of_the_uvicorn_worker(tmp_path: Path) -> None:
    _, asgi = _apps(tmp_path)
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-b", f"127.0.0.1:{port}"]
    command += [
        "-k",
        "fastbody.integrations.uvicorn.worker:FastUvicornWorker",
        "--chdir",
        str(asgi),
        "app:app",
    ]
    _check_started(command, port, tmp_path)


def test_gunicorn_colon_form_with_a_wrong_name(tmp_path: Path) -> None:
    wsgi, _ = _apps(tmp_path)
    command = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-b", f"127.0.0.1:{free_port()}"]
    command += ["-k", "fastbody.integrations.gunicorn:FastSink", "--chdir", str(wsgi), "app:app"]
    ran = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert ran.returncode != 0
    assert "cannot import name 'FastSink' from 'fastbody.integrations.gunicorn'" in ran.stderr, ran.stderr
    assert "TypeError" not in ran.stderr
