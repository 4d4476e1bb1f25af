"""fastbody's ``StaticFiles`` and ``fastbody serve`` as whitenoise and nginx users expect them,
through real servers: precompressed siblings, Cache-Control, conditionals (304, 412, If-Range),
ranges (ignored when they do not parse, 416 when unsatisfiable), index.html, dotfiles; every
body checked by hash and the path that moved it read from the server's ``fastbody.stats()``."""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
brotli = pytest.importorskip("brotli", reason="brotli not installed (pip install brotli)")

from servers import Server, fetch, moved, start_uvicorn, stop  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_cli import fastbody, terminate  # noqa: E402

APPS = Path(__file__).resolve().parent / "apps"
HASHED = "app.3f2a9c1b.js"
IDENTITY = {"Accept-Encoding": "identity"}  # httpx asks for gzip and br by default


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_site(root: Path) -> dict[str, bytes]:
    """A site as a build step leaves it: a stylesheet with .br and .gz siblings (each over the
    small-body threshold, so sendfile moves them), a script with a .gz only, a hashed name,
    index pages, dotfiles, a .well-known file."""
    css = os.urandom(200_000).hex().encode()  # compresses to about half: still sendfile-sized
    files = {
        "app.css": css,
        "app.css.gz": gzip.compress(css, mtime=0),
        "app.css.br": brotli.compress(css),
        "only-gz.js": b"console.log(1);\n" * 8000,
        "plain.txt": b"plain\n",
        HASHED: b"hashed();\n",
        "index.html": b"<h1>home</h1>\n",
        "sub/index.html": b"<h1>sub</h1>\n",
        ".env": b"SECRET=1\n",
        ".git/config": b"[core]\n",
        ".well-known/acme.txt": b"token\n",
    }
    files["only-gz.js.gz"] = gzip.compress(files["only-gz.js"], mtime=0)
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path_factory.mktemp("site")
    return root, build_site(root)


@pytest.fixture(scope="module", params=["h11", "httptools"])
def server(
    request: pytest.FixtureRequest,
    site: tuple[Path, dict[str, bytes]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    root, _ = site
    env = {"FASTBODY_TEST_STATIC": str(root)}
    running = start_uvicorn(
        "zerocopy_app:app", APPS, tmp_path_factory.mktemp("logs"), request.param, "asyncio", env=env
    )
    yield running
    stop(running)
    assert "Traceback" not in running.errors(), running.errors()


# ---- precompressed siblings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "coding", "sibling"),
    [
        ("br, gzip", "br", "app.css.br"),
        ("gzip, deflate, br", "br", "app.css.br"),  # brotli first at equal q
        ("gzip", "gzip", "app.css.gz"),
        ("br;q=0.5, gzip", "gzip", "app.css.gz"),
        ("br;q=0, gzip;q=0", None, "app.css"),
        ("identity", None, "app.css"),
        ("*", "br", "app.css.br"),
        ("", None, "app.css"),
    ],
)
def test_precompressed_sibling_by_accept_encoding(
    server: Server, site: tuple[Path, dict[str, bytes]], accept: str, coding: str | None, sibling: str
) -> None:
    _, files = site
    before = server.stats()
    got = fetch(f"{server.url}/static/app.css", headers={"Accept-Encoding": accept})
    assert (got.status, got.size, got.sha256) == (200, len(files[sibling]), sha(files[sibling]))
    assert got.headers.get("content-encoding") == coding
    assert got.headers["content-type"] == "text/css; charset=utf-8"
    assert got.headers["vary"] == "Accept-Encoding"
    assert got.headers["content-length"] == str(len(files[sibling]))
    assert moved(before, server.stats()) == {"sendfile": len(files[sibling])}


def test_each_representation_has_its_own_etag(server: Server) -> None:
    tags = {
        accept: fetch(f"{server.url}/static/app.css", headers={"Accept-Encoding": accept}).headers["etag"]
        for accept in ("br", "gzip", "identity")
    }
    assert len(set(tags.values())) == 3, tags
    gz = tags["gzip"]
    again = fetch(f"{server.url}/static/app.css", headers={"Accept-Encoding": "gzip", "If-None-Match": gz})
    assert (again.status, again.size, again.headers["vary"]) == (304, 0, "Accept-Encoding")
    # The identity representation is not the one the tag names: sent whole.
    other = fetch(
        f"{server.url}/static/app.css", headers={"Accept-Encoding": "identity", "If-None-Match": gz}
    )
    assert other.status == 200


def test_ranges_apply_to_the_representation_sent(server: Server, site: tuple[Path, dict[str, bytes]]) -> None:
    _, files = site
    before = server.stats()
    got = fetch(f"{server.url}/static/app.css", headers={"Accept-Encoding": "gzip", "Range": "bytes=1000-"})
    gz = files["app.css.gz"]
    assert (got.status, got.sha256) == (206, sha(gz[1000:]))
    assert got.headers["content-range"] == f"bytes 1000-{len(gz) - 1}/{len(gz)}"
    assert got.headers["content-encoding"] == "gzip"
    assert moved(before, server.stats()) == {"sendfile": len(gz) - 1000}


def test_a_sibling_of_one_coding_only(server: Server, site: tuple[Path, dict[str, bytes]]) -> None:
    _, files = site
    br = fetch(f"{server.url}/static/only-gz.js", headers={"Accept-Encoding": "br"})
    assert (br.sha256, br.headers.get("content-encoding"), br.headers["vary"]) == (
        sha(files["only-gz.js"]),
        None,
        "Accept-Encoding",
    )
    gz = fetch(f"{server.url}/static/only-gz.js", headers={"Accept-Encoding": "br, gzip"})
    assert (gz.sha256, gz.headers["content-encoding"]) == (sha(files["only-gz.js.gz"]), "gzip")


def test_no_vary_without_siblings(server: Server) -> None:
    got = fetch(f"{server.url}/static/plain.txt", headers={"Accept-Encoding": "gzip, br"})
    assert got.status == 200
    assert "vary" not in got.headers and "content-encoding" not in got.headers


@pytest.mark.parametrize(
    ("name", "media_type"), [("app.css.gz", "application/gzip"), ("app.css.br", "application/x-brotli")]
)
def test_a_compressed_file_by_its_own_name(
    server: Server, site: tuple[Path, dict[str, bytes]], name: str, media_type: str
) -> None:
    _, files = site
    got = fetch(f"{server.url}/static/{name}", headers={"Accept-Encoding": "gzip, br"})
    assert (got.status, got.sha256) == (200, sha(files[name]))
    assert got.headers["content-type"] == media_type
    assert "content-encoding" not in got.headers


# ---- caching -----------------------------------------------------------------------------------------


def test_cache_control(server: Server) -> None:
    assert fetch(f"{server.url}/static/plain.txt").headers["cache-control"] == "public, max-age=60"
    hashed = fetch(f"{server.url}/static/{HASHED}").headers["cache-control"]
    assert hashed == "public, max-age=31536000, immutable"


# ---- conditionals and ranges ---------------------------------------------------------------------


def test_conditionals(server: Server, site: tuple[Path, dict[str, bytes]]) -> None:
    _, files = site
    url = f"{server.url}/static/only-gz.js"
    whole = fetch(url, headers=IDENTITY)
    etag, last_modified = whole.headers["etag"], whole.headers["last-modified"]
    before = server.stats()
    cases = [
        ({"If-None-Match": etag}, 304),
        ({"If-None-Match": f'"x", W/{etag}'}, 304),  # weak comparison
        ({"If-Modified-Since": last_modified}, 304),
        ({"If-None-Match": '"x"', "If-Modified-Since": last_modified}, 200),  # INM wins
        ({"If-Match": '"x"'}, 412),
        ({"If-Match": f"W/{etag}"}, 412),  # strong comparison
        ({"If-Match": etag}, 200),
        ({"If-Match": "*"}, 200),
        ({"If-Unmodified-Since": "Thu, 01 Jan 1970 00:00:01 GMT"}, 412),
        ({"If-Unmodified-Since": last_modified}, 200),
        ({"If-Match": etag, "If-Unmodified-Since": "Thu, 01 Jan 1970 00:00:01 GMT"}, 200),  # If-Match wins
    ]
    for headers, status in cases:
        got = fetch(url, headers={**IDENTITY, **headers})
        assert got.status == status, (headers, got.status)
        if status == 200:
            assert got.sha256 == sha(files["only-gz.js"])
        else:
            assert got.size == 0
    assert moved(before, server.stats()) == {"sendfile": 5 * len(files["only-gz.js"])}


@pytest.mark.parametrize("value", ["items=0-1", "bytes=abc", "bytes=5-1", "bytes0-1", "bytes="])
def test_a_range_that_does_not_parse_is_ignored(
    server: Server, site: tuple[Path, dict[str, bytes]], value: str
) -> None:
    _, files = site
    got = fetch(f"{server.url}/static/only-gz.js", headers={**IDENTITY, "Range": value})
    assert (got.status, got.sha256) == (200, sha(files["only-gz.js"]))
    assert "content-range" not in got.headers


def test_unsatisfiable_range_is_416(server: Server, site: tuple[Path, dict[str, bytes]]) -> None:
    _, files = site
    size = len(files["only-gz.js"])
    got = fetch(f"{server.url}/static/only-gz.js", headers={**IDENTITY, "Range": f"bytes={size}-"})
    assert (got.status, got.size, got.headers["content-range"]) == (416, 0, f"bytes */{size}")


def test_if_range(server: Server, site: tuple[Path, dict[str, bytes]]) -> None:
    _, files = site
    url = f"{server.url}/static/only-gz.js"
    whole = fetch(url, headers=IDENTITY)
    for if_range, status in [
        (whole.headers["etag"], 206),
        (whole.headers["last-modified"], 206),
        ('"stale"', 200),
    ]:
        got = fetch(url, headers={**IDENTITY, "Range": "bytes=0-9", "If-Range": if_range})
        assert got.status == status, if_range
        assert got.sha256 == sha(files["only-gz.js"][:10] if status == 206 else files["only-gz.js"])


def test_multipart_ranges_by_sendfile(server: Server, site: tuple[Path, dict[str, bytes]]) -> None:
    _, files = site
    data = files["app.css"]
    before = server.stats()
    with httpx.Client(timeout=30) as client:
        got = client.get(
            f"{server.url}/static/app.css", headers={**IDENTITY, "Range": "bytes=0-99999,200000-299999"}
        )
    assert got.status_code == 206
    assert got.headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert int(got.headers["content-length"]) == len(got.content)
    assert data[:100000] in got.content and data[200000:300000] in got.content
    # The ranges by sendfile; the boundaries are uvicorn's own body messages (not counted).
    assert moved(before, server.stats()) == {"sendfile": 200000}


# ---- fastbody serve: index, dotfiles, options -------------------------------------------------------


def raw_get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while data := client.recv(65536):
            answer += data
    return answer


def test_serve_defaults(site: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, files = site
    command = fastbody("serve", str(root), tmp=tmp_path)
    try:
        with httpx.Client(timeout=30) as client:
            assert client.get(f"{command.url}/").content == files["index.html"]
            assert client.get(f"{command.url}/sub/").content == files["sub/index.html"]
            redirect = client.get(f"{command.url}/sub")
            assert (redirect.status_code, redirect.headers["location"]) == (307, f"{command.url}/sub/")
            gz = client.get(f"{command.url}/app.css", headers={"Accept-Encoding": "gzip"})
            assert (gz.headers["content-encoding"], gz.headers["cache-control"]) == (
                "gzip",
                "public, max-age=60",
            )
            assert client.get(f"{command.url}/.well-known/acme.txt").content == files[".well-known/acme.txt"]
        for hidden in ["/.env", "/.git/config", "/%2egit/config", "/sub/../.env"]:
            answer = raw_get(command.port, hidden)
            assert answer.startswith(b"HTTP/1.1 404"), (hidden, answer[:100])
            assert b"SECRET" not in answer and b"[core]" not in answer
    finally:
        terminate(command)


def test_serve_options(site: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, files = site
    options = ["--no-precompressed", "--max-age", "5", "--no-index", "--dotfiles"]
    command = fastbody("serve", str(root), *options, tmp=tmp_path)
    try:
        with httpx.Client(timeout=30) as client:
            plain = client.get(f"{command.url}/app.css", headers={"Accept-Encoding": "br, gzip"})
            assert "content-encoding" not in plain.headers and "vary" not in plain.headers
            assert plain.content == files["app.css"]
            assert plain.headers["cache-control"] == "public, max-age=5"
            assert client.get(f"{command.url}/{HASHED}").headers["cache-control"].endswith("immutable")
            assert client.get(f"{command.url}/").status_code == 404
            assert client.get(f"{command.url}/sub").status_code == 404
            assert client.get(f"{command.url}/.env").content == files[".env"]
    finally:
        terminate(command)


def test_serve_rejects_a_negative_max_age(tmp_path: Path) -> None:
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "fastbody", "serve", str(tmp_path), "--max-age", "-1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "must be 0 or more" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("path", ["/static/plain.txt/", "/static/sub/index.html/", "/static/app.css/"])
def test_a_file_is_no_directory(server: Server, path: str) -> None:
    # whitenoise, servestatic and nginx answer 404; Starlette's own StaticFiles drops the slash.
    got = fetch(f"{server.url}{path}")
    assert got.status == 404


# ---- review follow-ups: siblings and names under StaticFiles' own symlink rule -------------------


def test_siblings_and_names_keep_inside_the_directory(tmp_path: Path) -> None:
    """A sibling that is a symlink leading out is no sibling (the original goes); a symlink to a
    dot-directory hides as the dot-name does; a long name with a slash is a 404, not a 500."""
    root, outside = tmp_path / "site", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret outside\n")
    (root / "app.css").write_bytes(b"body { }\n" * 100)
    (root / "app.css.gz").symlink_to(outside / "secret.txt")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_bytes(b"[core]\n")
    (root / "assets").symlink_to(root / ".git")
    command = fastbody("serve", str(root), tmp=tmp_path)
    try:
        with httpx.Client(timeout=30) as client:
            css = client.get(f"{command.url}/app.css", headers={"Accept-Encoding": "gzip"})
            assert (css.status_code, css.content) == (200, b"body { }\n" * 100)
            assert "content-encoding" not in css.headers and "vary" not in css.headers
            assert client.get(f"{command.url}/app.css.gz").status_code == 404
        for path in ["/assets/config", "/" + "a" * 300 + "/"]:
            answer = raw_get(command.port, path)
            assert answer.startswith(b"HTTP/1.1 404"), (path, answer[:100])
            assert b"[core]" not in answer
    finally:
        output = terminate(command)
    assert "Traceback" not in output, output


def test_no_cache_control_when_max_age_is_none(tmp_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    from fastbody.integrations.starlette import StaticFiles

    (tmp_path / HASHED).write_bytes(b"x")
    (tmp_path / "plain.txt").write_bytes(b"x")
    client = TestClient(Starlette(routes=[Mount("/", StaticFiles(directory=tmp_path, max_age=None))]))
    for name in [HASHED, "plain.txt"]:
        assert "cache-control" not in client.get(f"/{name}").headers
