"""``fastbody serve`` side by side with whitenoise (and nginx when installed): one tree, one list
of requests (plain, HEAD, Accept-Encoding, ranges, conditionals, odd paths), and for each answer
the status, the media type, Content-Encoding, Vary, Content-Length, Content-Range and the body
(by sha256; multipart ranges by their parsed parts, for boundaries differ) compared field by
field. Where a peer legitimately answers otherwise, the difference is written down in
``EXPECTED`` with the reason; any other difference fails, and so does a listed one that went
away. Requests go over raw sockets: exactly the bytes of the path and headers given (no client
normalising ``/../x`` or adding ``Accept-Encoding``), and the body read raw.

``benchmarks/static_behaviour.py`` runs the same requests against more servers and writes the
table in ``docs/static-comparison.md``."""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("gunicorn")
pytest.importorskip("whitenoise", reason="whitenoise not installed (pip install whitenoise)")
brotli = pytest.importorskip("brotli", reason="brotli not installed (pip install brotli)")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import Server, accepts, free_port, launch, stop, wait_until  # noqa: E402
from test_cli import Command, fastbody, terminate  # noqa: E402

APPS = Path(__file__).resolve().parent / "apps"
HASHED = "app.3f2a9c1b.js"
MTIME = 1_700_000_000  # every file's mtime: Last-Modified the same on each run
SMALL_BODY = 32 << 10  # fastbody.plan.SMALL_BODY: shorter bodies are copied, not sendfile'd
NGINX = shutil.which("nginx") or next((p for p in ["/usr/sbin/nginx"] if os.path.exists(p)), None)


# ---- the tree ----------------------------------------------------------------------------------


def tree_files() -> dict[str, bytes]:
    """The files of the tree by name: text and binary of 0 bytes to 300 KB, a stylesheet with .br
    and .gz siblings, a hashed script with a .gz only, index.html in the root and in ``sub/``,
    a dotfile. The same bytes on every run (the expected differences below name bodies)."""
    rng = random.Random(11)
    css = b"".join(b".c%d { color: #%06x; }\n" % (i, rng.randrange(1 << 24)) for i in range(8000))
    script = b"".join(b"console.log(%d);\n" % rng.randrange(1 << 30) for _ in range(6000))
    return {
        "index.html": b"<!doctype html><h1>home</h1>\n",
        "sub/index.html": b"<!doctype html><h1>sub</h1>\n",
        "sub/notes.txt": b"notes\n",
        "app.css": css,  # 215 KB
        "app.css.br": brotli.compress(css),  # 33 KB: over the copy threshold too
        "app.css.gz": gzip.compress(css, mtime=0),
        HASHED: script,
        f"{HASHED}.gz": gzip.compress(script, mtime=0),
        "small.txt": b"small\n",
        "empty.txt": b"",
        "mid.txt": rng.randbytes(20_000).hex().encode(),  # 40 KB: between the thresholds
        "image.png": b"\x89PNG\r\n\x1a\n" + rng.randbytes(100_000),
        "data.bin": rng.randbytes(300_000),
        ".env": b"SECRET=1\n",
    }


FILES = tree_files()


def build_tree(root: Path) -> dict[str, bytes]:
    """``FILES`` under ``root``, each with the mtime ``MTIME``, and a secret ``x`` beside
    ``root`` that must never be served."""
    for name, data in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (MTIME, MTIME))
    (root.parent / "x").write_bytes(b"secret beside the root\n")
    return FILES


# ---- the requests ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ask:
    name: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    method: str = "GET"
    validator: str | None = None
    """``If-None-Match`` / ``If-Modified-Since``: sent with the value of the server's own
    ``ETag`` / ``Last-Modified`` for the same path and headers (fetched just before)."""


def _ae(value: str) -> tuple[str, str]:
    return ("Accept-Encoding", value)


IDENTITY = _ae("identity")

REQUESTS: list[Ask] = [
    Ask("small text", "/small.txt", (IDENTITY,)),
    Ask("empty file", "/empty.txt", (IDENTITY,)),
    Ask("40 KB text", "/mid.txt", (IDENTITY,)),
    Ask("binary 100 KB", "/image.png", (_ae("gzip, br"),)),  # no sibling: no coding, no Vary
    Ask("binary 300 KB", "/data.bin", (IDENTITY,)),
    Ask("HEAD binary", "/data.bin", (IDENTITY,), method="HEAD"),
    Ask("no Accept-Encoding", "/app.css"),
    Ask("AE identity", "/app.css", (IDENTITY,)),
    Ask("AE gzip", "/app.css", (_ae("gzip"),)),
    Ask("AE br", "/app.css", (_ae("br"),)),
    Ask("AE gzip, br", "/app.css", (_ae("gzip, br"),)),
    Ask("HEAD AE br", "/app.css", (_ae("br"),), method="HEAD"),
    Ask("hashed AE gzip", f"/{HASHED}", (_ae("gzip"),)),
    Ask("hashed AE br (.gz only)", f"/{HASHED}", (_ae("br"),)),
    Ask("sibling by its name", "/app.css.gz", (_ae("gzip"),)),
    Ask("range", "/data.bin", (IDENTITY, ("Range", "bytes=0-99"))),
    Ask("range open", "/data.bin", (IDENTITY, ("Range", "bytes=299990-"))),
    Ask("range suffix", "/data.bin", (IDENTITY, ("Range", "bytes=-100"))),
    Ask("range multi", "/data.bin", (IDENTITY, ("Range", "bytes=0-9,100000-199999"))),
    Ask("range of gzip", "/app.css", (_ae("gzip"), ("Range", "bytes=0-99"))),
    Ask("range unsatisfiable", "/data.bin", (IDENTITY, ("Range", "bytes=300000-"))),
    Ask("range of empty file", "/empty.txt", (IDENTITY, ("Range", "bytes=0-0"))),
    Ask("range bytes=abc", "/data.bin", (IDENTITY, ("Range", "bytes=abc"))),
    Ask("range items=0-1", "/data.bin", (IDENTITY, ("Range", "items=0-1"))),
    Ask("If-None-Match own", "/data.bin", (IDENTITY,), validator="If-None-Match"),
    Ask("If-None-Match own gzip", "/app.css", (_ae("gzip"),), validator="If-None-Match"),
    Ask("If-Modified-Since own", "/data.bin", (IDENTITY,), validator="If-Modified-Since"),
    Ask("If-Match wrong", "/data.bin", (IDENTITY, ("If-Match", '"wrong"'))),
    Ask(
        "If-Unmodified-Since old",
        "/data.bin",
        (IDENTITY, ("If-Unmodified-Since", "Thu, 01 Jan 1970 00:00:01 GMT")),
    ),
    Ask("/", "/", (IDENTITY,)),
    Ask("/sub", "/sub", (IDENTITY,)),
    Ask("/sub/", "/sub/", (IDENTITY,)),
    Ask("/sub/index.html", "/sub/index.html", (IDENTITY,)),
    Ask("/.env", "/.env", (IDENTITY,)),
    Ask("/../x", "/../x", (IDENTITY,)),
    Ask("/%2e%2e/x", "/%2e%2e/x", (IDENTITY,)),
    Ask("/sub/..%2f..%2fx", "/sub/..%2f..%2fx", (IDENTITY,)),
    Ask("missing file", "/missing.txt", (IDENTITY,)),
    # Beyond the list: where the three servers were seen to part ways.
    Ask("range bytes=5-1", "/data.bin", (IDENTITY, ("Range", "bytes=5-1"))),
    Ask("range overlapping", "/data.bin", (IDENTITY, ("Range", "bytes=0-9,5-19"))),
    Ask("If-Range stale", "/data.bin", (IDENTITY, ("Range", "bytes=0-9"), ("If-Range", '"stale"'))),
    Ask("If-None-Match *", "/data.bin", (IDENTITY, ("If-None-Match", "*"))),
    Ask("AE *", "/app.css", (_ae("*"),)),
    Ask("AE gzip;q=0", "/app.css", (_ae("gzip;q=0"),)),
    Ask("POST", "/small.txt", (IDENTITY, ("Content-Length", "0")), method="POST"),
    Ask("query string", "/small.txt?v=1", (IDENTITY,)),
    Ask("/small.txt/", "/small.txt/", (IDENTITY,)),
    Ask("/sub/%2e%2e/small.txt", "/sub/%2e%2e/small.txt", (IDENTITY,)),
]


# ---- asking over a raw socket ------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names lowercased; repeated fields joined with ", "
    body: bytes


def ask(port: int, method: str, path: str, headers: tuple[tuple[str, str], ...] = ()) -> Answer:
    """One request on its own connection (``Connection: close``), the answer read to EOF."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = bytearray()
        while chunk := conn.recv(1 << 16):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    found: dict[str, str] = {}
    for line in fields:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        found[key] = f"{found[key]}, {value.strip()}" if key in found else value.strip()
    if found.get("transfer-encoding", "").lower() == "chunked":
        body = _unchunk(body)
    return Answer(int(status_line.split()[1]), found, body)


def _unchunk(body: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += body[:size]
        body = body[size + 2 :]


def digest(data: bytes) -> str:
    return f"{len(data)} bytes sha256:{hashlib.sha256(data).hexdigest()[:16]}"


def parts(answer: Answer) -> tuple[tuple[str, str, str], ...]:
    """A ``multipart/byteranges`` body as (media type, Content-Range, digest) per part."""
    boundary = answer.headers["content-type"].split("boundary=")[1].strip('"').encode()
    found = []
    for chunk in answer.body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.lstrip(b"\r\n").partition(b"\r\n\r\n")
        fields = dict(
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(":") for line in head.decode("latin-1").split("\r\n"))
        )
        found.append((_media(fields.get("content-type")), fields.get("content-range", ""), digest(data[:-2])))
    return tuple(found)


def _media(value: str | None) -> str | None:
    return None if value is None else value.split(";")[0].strip().lower()


FIELDS = ("status", "type", "encoding", "vary", "length", "range", "body")


def record(answer: Answer) -> dict[str, Any]:
    """What is compared of an answer: the media type without its parameters (``charset``, the
    multipart boundary), Vary's names sorted and lowercased. A multipart body is its parts;
    its Content-Length (which counts the boundaries each server picks) is compared as
    whether it is the length of the body."""
    kind = _media(answer.headers.get("content-type"))
    vary = answer.headers.get("vary")
    length = answer.headers.get("content-length")
    body: Any = digest(answer.body)
    if kind == "multipart/byteranges":
        body = parts(answer)
        length = "the body's" if length == str(len(answer.body)) else f"{length} != {len(answer.body)}"
    return {
        "status": answer.status,
        "type": kind,
        "encoding": answer.headers.get("content-encoding"),
        "vary": None if vary is None else ", ".join(sorted(v.strip().lower() for v in vary.split(","))),
        "length": length,
        "range": answer.headers.get("content-range"),
        "body": body,
    }


def run_requests(
    port: int, requests: list[Ask] = REQUESTS, sendfile: Callable[[], int] | None = None
) -> tuple[dict[str, Answer], dict[str, int]]:
    """Each request's answer, and (when ``sendfile`` reads the server's counter) the bytes
    sendfile moved for each (the validator fetched before it not counted)."""
    answers, moved = {}, {}
    for request in requests:
        headers = request.headers
        if request.validator is not None:
            source = {"If-None-Match": "etag", "If-Modified-Since": "last-modified"}[request.validator]
            first = ask(port, "GET", request.path, headers)
            assert source in first.headers, (request, first.headers)
            headers = (*headers, (request.validator, first.headers[source]))
        before = sendfile() if sendfile is not None else 0
        answers[request.name] = ask(port, request.method, request.path, headers)
        if sendfile is not None:
            moved[request.name] = sendfile() - before
    return answers, moved


# ---- the servers -------------------------------------------------------------------------------


def start_fastbody(root: Path, tmp: Path) -> Command:
    """``fastbody serve ROOT`` (uvicorn, fastbody's protocol, one worker)."""
    return fastbody("serve", str(root), tmp=tmp)


def start_whitenoise(root: Path, tmp: Path) -> Server:
    """whitenoise as a WSGI app under gunicorn with fastbody's sync worker."""
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-k", "egg:fastbody#sync"]
    command += ["-b", f"127.0.0.1:{port}", "-w", "1", "--chdir", str(APPS), "compare_whitenoise_app:app"]
    return launch(command, port, tmp / f"whitenoise-{port}.log", env={"FASTBODY_COMPARE_ROOT": str(root)})


@dataclass
class Nginx:
    process: subprocess.Popen[bytes]
    port: int
    prefix: Path
    logs: list[Path] = field(default_factory=list)

    def output(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in self.logs if path.exists())


NGINX_CONF = """\
daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    sendfile on;
    etag on;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        index index.html;
        # .gz siblings only: brotli_static needs ngx_brotli, which Debian's nginx lacks.
        gzip_static on;
        # As one configures it for precompressed files: Vary: Accept-Encoding beside a .gz.
        gzip_vary on;
    }}
}}
"""


def start_nginx(root: Path, tmp: Path) -> Nginx:
    """nginx as the current user, everything it writes under ``tmp/nginx``."""
    assert NGINX is not None
    prefix = tmp / "nginx"
    prefix.mkdir(exist_ok=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, root=root))
    log = prefix / "stderr.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    server = Nginx(process, port, prefix, [log, prefix / "error.log"])
    wait_until(lambda: accepts(port) or process.poll() is not None, 30, "nginx up")
    assert process.poll() is None, server.output()
    return server


def stop_nginx(server: Nginx) -> None:
    server.process.send_signal(signal.SIGTERM)  # master_process off: SIGTERM is a fast shutdown
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(10)


def sendfile_moved(output: str) -> int:
    """The ``sendfile`` bytes of the ``bytes moved`` lines ``fastbody serve`` logs at exit."""
    lines = [line for line in output.splitlines() if "bytes moved" in line]
    assert lines, output
    return sum(int(line.split("sendfile ")[1].split(",")[0]) for line in lines)


# ---- what the peers answer otherwise, and why --------------------------------------------------

DIFFERS = "<differs>"
"""An expected value not pinned: the peer's own error page (its body, its length)."""


def whole(name: str) -> dict[str, Any]:
    """The fields of a 200 with the whole of ``name`` (no coding): what a peer sends when it
    ignores the condition or the range fastbody obeyed."""
    return {"status": 200, "length": str(len(FILES[name])), "body": digest(FILES[name])}


def sent(name: str, coding: str | None = None) -> dict[str, Any]:
    """The coding, length and body of ``name`` itself (the original, or a sibling)."""
    return {"encoding": coding, "length": str(len(FILES[name])), "body": digest(FILES[name])}


EMPTY = digest(b"")
NOT_FOUND = {"status": 404, "type": "text/plain", "length": "9", "body": digest(b"Not Found")}
"""The whitenoise app's fallback 404 (the same words as Starlette's)."""
NGINX_PAGE = {"type": "text/html", "length": DIFFERS, "body": DIFFERS}
"""nginx's HTML error page, where fastbody sends Starlette's text or nothing."""
OCTETS = "application/octet-stream"

EXPECTED: dict[str, dict[str, tuple[dict[str, Any], str]]] = {
    "whitenoise": {
        "sibling by its name": (
            NOT_FOUND,
            "whitenoise never serves a .gz/.br sibling under its own name (is_compressed_variant: "
            "only as a coding of app.css)",
        ),
        "range multi": (
            {"type": OCTETS, **whole("data.bin")},
            "whitenoise serves one range only; several: the whole file",
        ),
        "range overlapping": ({**whole("data.bin"), "range": None}, "whitenoise serves one range only"),
        "range unsatisfiable": (
            {"length": None},
            "whitenoise's 416 has no Content-Length (connection close)",
        ),
        "range of empty file": ({"length": None}, "whitenoise's 416 has no Content-Length"),
        "range bytes=5-1": (
            {"status": 416, "type": None, "length": None, "range": "bytes */300000", "body": EMPTY},
            "whitenoise answers 416 to last < first; RFC 9110 14.1.1 calls it invalid, and fastbody "
            "ignores an invalid Range (14.2 allows either)",
        ),
        "If-Match wrong": ({"type": OCTETS, **whole("data.bin")}, "whitenoise has no If-Match (no 412)"),
        "If-Unmodified-Since old": (
            {"type": OCTETS, **whole("data.bin")},
            "whitenoise has no If-Unmodified-Since (no 412)",
        ),
        "If-Range stale": (
            {
                "status": 206,
                "length": "10",
                "range": "bytes 0-9/300000",
                "body": digest(FILES["data.bin"][:10]),
            },
            "whitenoise ignores If-Range: a stale validator still gets the range",
        ),
        "If-None-Match *": (
            {"type": OCTETS, **whole("data.bin")},
            "whitenoise compares If-None-Match with its ETag as a string: `*` never matches",
        ),
        "AE *": (
            sent("app.css"),
            "whitenoise matches coding names literally: `*` is no coding (fastbody: RFC 9110 12.5.3, br)",
        ),
        "AE gzip;q=0": (sent("app.css.gz", "gzip"), "whitenoise ignores q-values"),
        "/sub": ({"status": 302, "length": None}, "whitenoise redirects with 302 (Location `sub/`)"),
        "/sub/index.html": (
            {"status": 302, "type": None, "length": None, "body": EMPTY},
            "whitenoise redirects an index.html to its directory (Location `./`)",
        ),
        "/.env": (
            {"status": 200, "type": OCTETS, "body": digest(FILES[".env"])},
            "whitenoise serves every file under its root; fastbody serve hides dotfiles (--dotfiles)",
        ),
        "/sub/%2e%2e/small.txt": (
            {"status": 404, "length": "9", "body": digest(b"Not Found")},
            "whitenoise looks the path up as it is among the files it listed; fastbody (and nginx) "
            "resolve the dot segments inside the root",
        ),
        "POST": (
            {"type": None, "length": None, "body": EMPTY},
            "both 405 with Allow: GET, HEAD; whitenoise's has no body",
        ),
    },
    "nginx": {
        "AE br": (sent("app.css"), "no brotli_static in Debian's nginx: the original"),
        "AE gzip, br": (sent("app.css.gz", "gzip"), "no brotli_static: the .gz"),
        "HEAD AE br": ({"encoding": None, "length": str(len(FILES["app.css"]))}, "no brotli_static"),
        "AE *": (sent("app.css"), "gzip_static matches `gzip` literally: `*` is no coding"),
        "hashed AE gzip": (
            {"type": "application/javascript"},
            "Debian nginx 1.22's mime.types; text/javascript since RFC 9239",
        ),
        "hashed AE br (.gz only)": ({"type": "application/javascript"}, "mime.types, as above"),
        "sibling by its name": (
            {"type": OCTETS},
            "nginx's mime.types has no .gz (its default_type); fastbody says application/gzip",
        ),
        "range of gzip": (
            {**whole("app.css.gz"), "range": None},
            "nginx does not apply ranges to a gzip_static answer",
        ),
        "range unsatisfiable": (NGINX_PAGE, "416 with nginx's HTML page"),
        "range of empty file": (
            {"status": 200, "type": "text/plain", "range": None},
            "nginx ignores a Range on an empty file (nothing to slice); RFC 9110 says 416",
        ),
        "range bytes=abc": (
            {"status": 416, "range": "bytes */300000", **NGINX_PAGE},
            "nginx answers 416 to a Range it cannot parse; fastbody ignores it (RFC 9110 14.2 allows)",
        ),
        "range bytes=5-1": (
            {"status": 416, "range": "bytes */300000", **NGINX_PAGE},
            "nginx answers 416 to last < first; fastbody ignores an invalid Range",
        ),
        "range overlapping": (
            {"type": "multipart/byteranges", "length": "the body's", "range": None, "body": DIFFERS},
            "nginx sends overlapping ranges as they are asked; fastbody merges them (RFC 9110 14.2 allows)",
        ),
        "If-Match wrong": (NGINX_PAGE, "412 with nginx's HTML page"),
        "If-Unmodified-Since old": (NGINX_PAGE, "412 with nginx's HTML page"),
        "/sub": ({"status": 301, **NGINX_PAGE}, "nginx redirects with 301 and an HTML page; fastbody 307"),
        "/.env": (
            {"status": 200, "type": OCTETS, "body": digest(FILES[".env"])},
            "nginx serves dotfiles unless a location denies them; fastbody serve hides them",
        ),
        "/../x": ({"status": 400, **NGINX_PAGE}, "nginx refuses a path above the root as a bad request"),
        "/%2e%2e/x": ({"status": 400, **NGINX_PAGE}, "nginx decodes, then refuses a path above the root"),
        "/sub/..%2f..%2fx": ({"status": 400, **NGINX_PAGE}, "as above"),
        "missing file": (NGINX_PAGE, "404 with nginx's HTML page"),
        "POST": (NGINX_PAGE, "405 with nginx's HTML page (and no Allow)"),
        "/small.txt/": (NGINX_PAGE, "404 with nginx's HTML page (once fastbody's is a 404: BUGS)"),
    },
}

BUGS: dict[str, tuple[dict[str, Any], str]] = {}
# (/small.txt/ was one: answered with the file, where both peers say 404; fixed in StaticFiles.)
"""Where fastbody answers otherwise than both peers in a way a user would call a bug: the
field values it should have, and why. Such a case is an xfail until fastbody is fixed."""


def differences(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    return {name: theirs[name] for name in FIELDS if theirs[name] != ours[name]}


# ---- the servers, once for the module ----------------------------------------------------------


@dataclass
class Results:
    records: dict[str, dict[str, dict[str, Any]]]  # server, request: record
    fastbody_sendfile: int
    whitenoise_sendfile: dict[str, int]  # request: bytes whitenoise's worker moved by sendfile


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Results]:
    tmp = tmp_path_factory.mktemp("compare")
    root = tmp / "site"
    root.mkdir()
    build_tree(root)
    records: dict[str, dict[str, dict[str, Any]]] = {}
    command = start_fastbody(root, tmp)
    try:
        answers, _ = run_requests(command.port)
        records["fastbody"] = {name: record(answer) for name, answer in answers.items()}
    finally:
        output = terminate(command)
    assert "Traceback" not in output, output
    whitenoise = start_whitenoise(root, tmp)
    try:
        answers, moved = run_requests(whitenoise.port, sendfile=lambda: whitenoise.stats()["sendfile"])
        records["whitenoise"] = {name: record(answer) for name, answer in answers.items()}
    finally:
        stop(whitenoise)
    assert "Traceback" not in whitenoise.errors(), whitenoise.errors()
    if NGINX is not None:
        nginx = start_nginx(root, tmp)
        try:
            answers, _ = run_requests(nginx.port)
            records["nginx"] = {name: record(answer) for name, answer in answers.items()}
        finally:
            stop_nginx(nginx)
    yield Results(records, sendfile_moved(output), moved)


# ---- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("request_name", [request.name for request in REQUESTS])
@pytest.mark.parametrize("peer", ["whitenoise", "nginx"])
def test_same_answer_as_the_peer(results: Results, peer: str, request_name: str) -> None:
    if peer == "nginx" and NGINX is None:
        pytest.skip("nginx not installed (Debian package nginx): compared with whitenoise only")
    ours, theirs = results.records["fastbody"][request_name], results.records[peer][request_name]
    if request_name in BUGS:
        should, reason = BUGS[request_name]
        if any(ours[name] != value for name, value in should.items()):
            pytest.xfail(f"fastbody bug: {reason}")
    expected, why = EXPECTED[peer].get(request_name, ({}, "the same answer"))
    found = differences(ours, theirs)
    pinned = {name: found.get(name) if value == DIFFERS else value for name, value in expected.items()}
    assert found == pinned, f"{peer} vs fastbody for {request_name!r} (expected: {why})\n{ours}\n{theirs}"
    assert all(name in found for name in expected), f"{request_name!r}: no longer differs: {why}"


def test_every_expected_difference_names_a_request() -> None:
    names = {request.name for request in REQUESTS}
    for table in [*EXPECTED.values(), BUGS]:
        assert set(table) <= names, set(table) - names


def test_sendfile_where_whitenoise_uses_it(results: Results) -> None:
    """Every body whitenoise's worker moved by sendfile, fastbody serve moved by sendfile too
    (its counts, logged at exit, cover at least those bodies)."""
    by_sendfile = {name: count for name, count in results.whitenoise_sendfile.items() if count}
    assert by_sendfile, "whitenoise moved nothing by sendfile"
    ours = results.records["fastbody"]
    floor = sum(body_bytes(ours[name]) for name in by_sendfile)
    assert results.fastbody_sendfile >= floor, (results.fastbody_sendfile, floor, by_sendfile)


def body_bytes(found: dict[str, Any]) -> int:
    """How many bytes of file a recorded body holds (a multipart body: its parts' bytes)."""
    body = found["body"]
    digests = [part[2] for part in body] if isinstance(body, tuple) else [body]
    return sum(int(text.split()[0]) for text in digests)
