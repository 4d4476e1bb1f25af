"""What one response costs beyond its bytes, counted (never timed): ``ZeroCopyResponse`` and
fastbody's ``StaticFiles`` make one worker-thread hop per request, listen for a disconnect only
when bytes go as ``http.response.body`` messages (a zero-copy body is the server's to stop),
and look precompressed siblings up with ``lookup_path``'s answer, whichever way they take.
A client that goes away during a zero-copy body is tested against real servers in
``test_zerocopy_response.py`` (``test_client_disconnect_mid_body``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")

import anyio
import anyio.to_thread
from starlette.staticfiles import StaticFiles as StarletteStaticFiles
from starlette.types import Message, Scope

from fastbody.integrations.asgi import PATHSEND, SPLICESEND, ZEROCOPYSEND
from fastbody.integrations.starlette import StaticFiles, ZeroCopyResponse

EXTENSIONS: dict[str, dict[str, Any]] = {PATHSEND: {}, ZEROCOPYSEND: {}, SPLICESEND: {}}
BODY = os.urandom(5000)


def scope_for(path: str = "/", extensions: dict[str, Any] | None = None, **headers: str) -> Scope:
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "root_path": "",
        "headers": [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()],
        "extensions": EXTENSIONS if extensions is None else extensions,
    }


async def no_receive() -> Message:
    raise AssertionError("receive() was called: a disconnect listener ran")


class Recorder:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def types(self) -> list[str]:
        return [message["type"] for message in self.messages]


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The names of the functions run in worker threads (anyio.to_thread.run_sync), in order."""
    ran: list[str] = []
    original = anyio.to_thread.run_sync

    async def counting(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        ran.append(getattr(func, "__name__", repr(func)))
        return await original(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    yield ran


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "app.css").write_bytes(BODY)
    (tmp_path / "app.css.gz").write_bytes(b"gzipped")
    return tmp_path


@pytest.mark.anyio
@pytest.mark.parametrize("headers", [{}, {"range": "bytes=0-9"}])
async def test_a_zero_copy_path_is_one_hop_and_no_listener(
    site: Path, hops: list[str], headers: dict[str, str]
) -> None:
    send = Recorder()
    await ZeroCopyResponse(site / "app.css")(scope_for(**headers), no_receive, send)
    assert send.types == ["http.response.start", ZEROCOPYSEND]
    assert send.messages[1]["file"].closed  # opened for the response, closed after it
    assert hops == ["_stat_regular_file"]


@pytest.mark.anyio
async def test_a_path_stated_moments_ago_is_stated_on_the_loop(site: Path, hops: list[str]) -> None:
    for _ in range(3):
        send = Recorder()
        await ZeroCopyResponse(site / "app.css")(scope_for(), no_receive, send)
        assert send.types == ["http.response.start", ZEROCOPYSEND]
    assert hops == ["_stat_regular_file"]  # the first only: each stats afresh, the later on the loop
    (site / "app.css").unlink()
    with pytest.raises(RuntimeError, match="does not exist"):  # stated (on the loop) again, not remembered
        await ZeroCopyResponse(site / "app.css")(scope_for(), no_receive, Recorder())
    (site / "app.css").write_bytes(BODY)
    await ZeroCopyResponse(site / "app.css")(scope_for(), no_receive, Recorder())
    assert hops == ["_stat_regular_file"] * 2  # a failed stat is forgotten: back to a thread


@pytest.mark.anyio
async def test_recent_forgets_the_oldest_and_the_stale() -> None:
    from fastbody.integrations.starlette import _Recent

    recent = _Recent(seconds=3600, size=2)
    for name in ("a", "b", "c"):
        recent.found(name)
    assert list(recent.last) == ["b", "c"] and recent.fresh("c") and not recent.fresh("a")
    recent.found("b")
    assert list(recent.last) == ["c", "b"]  # the newest last
    recent.lost("b")
    assert not recent.fresh("b")
    stale = _Recent(seconds=0)
    stale.found("a")
    assert not stale.fresh("a")


@pytest.mark.anyio
async def test_the_fallback_opens_where_it_stats(site: Path, hops: list[str]) -> None:
    # Without the extensions the engine reads the file (in the loop's executor); the response
    # itself hops once, for the stat, and opens the file right after it.
    async def disconnect_never() -> Message:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    send = Recorder()
    await ZeroCopyResponse(site / "app.css")(scope_for(extensions={}), disconnect_never, send)
    assert b"".join(message.get("body", b"") for message in send.messages[1:]) == BODY
    assert hops == ["_stat_regular_file"]


@pytest.mark.anyio
async def test_static_files_is_one_hop_and_no_listener(site: Path, hops: list[str]) -> None:
    send = Recorder()
    app = StaticFiles(directory=site)
    app.config_checked = True  # (Starlette's one-off directory check hops once, on first use)
    await app(scope_for("/app.css", accept_encoding="gzip"), no_receive, send)
    assert send.types == ["http.response.start", ZEROCOPYSEND]
    assert dict(send.messages[0]["headers"])[b"content-encoding"] == b"gzip"
    assert hops == ["lookup_path"]  # Starlette's own lookup; the file opens on the loop after it
    again = Recorder()
    await app(scope_for("/app.css", accept_encoding="gzip"), no_receive, again)
    assert again.messages[0] == send.messages[0]  # the same answer,
    assert hops == ["lookup_path"]  # looked up again on the loop: found moments ago


@pytest.mark.anyio
async def test_static_files_takes_starlettes_way_for_what_is_no_longer_a_file(
    site: Path, hops: list[str]
) -> None:
    app = StaticFiles(directory=site, html=True)
    app.config_checked = True
    await app(scope_for("/app.css"), no_receive, Recorder())
    (site / "app.css").unlink()
    (site / "app.css").mkdir()  # a directory now: Starlette's way (a redirect to app.css/)
    (site / "app.css" / "index.html").write_bytes(b"index")
    send = Recorder()
    await app(scope_for("/app.css"), no_receive, send)
    assert send.messages[0]["status"] == 307
    assert hops[0] == "lookup_path" and hops[1:3] == ["lookup_path", "lookup_path"]


@pytest.mark.anyio
async def test_multipart_boundaries_still_listen(site: Path) -> None:
    # Boundaries are http.response.body messages: a server may hold those for a gone client.
    with pytest.raises(AssertionError, match="receive"):
        await ZeroCopyResponse(site / "app.css")(scope_for(range="bytes=0-1,5-6"), no_receive, Recorder())


@pytest.mark.anyio
async def test_the_fallback_still_listens(site: Path) -> None:
    # Without the extensions the bytes are read here: only the listener stops the reading.
    with pytest.raises(AssertionError, match="receive"):
        await ZeroCopyResponse(site / "app.css")(scope_for(extensions={}), no_receive, Recorder())


@pytest.mark.anyio
async def test_head_sends_no_body_and_does_not_listen(site: Path) -> None:
    send = Recorder()
    scope = {**scope_for(), "method": "HEAD"}
    await ZeroCopyResponse(site / "app.css")(scope, no_receive, send)
    assert send.types == ["http.response.start", "http.response.body"]


# Siblings: the one-stat way gives lookup_path's own answer


def tree(root: Path, outside: Path) -> list[str]:
    """Originals with every kind of sibling: a file, none, a directory, a symlink inside, a
    symlink out, a dangling symlink; one reached through a symlinked directory."""
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_bytes(b"outside")
    for name in ["a.css", "b.css", "c.css", "d.css", "e.css", "f.css", "sub/g.css"]:
        (root / name).write_bytes(b"original")
    (root / "a.css.gz").write_bytes(b"gz")
    (root / "a.css.br").write_bytes(b"br")
    (root / "c.css.gz").mkdir()
    (root / "d.css.gz").symlink_to(root / "a.css.gz")
    (root / "e.css.gz").symlink_to(outside / "secret")
    (root / "f.css.br").symlink_to(root / "missing")
    (root / "sub/g.css.br").write_bytes(b"br")
    (root / "linked").symlink_to(root / "sub")
    return ["a.css", "b.css", "c.css", "d.css", "e.css", "f.css", "sub/g.css", "linked/g.css"]


@pytest.mark.parametrize("follow_symlink", [False, True])
@pytest.mark.parametrize("several", [False, True])
def test_siblings_are_what_lookup_path_finds(tmp_path: Path, follow_symlink: bool, several: bool) -> None:
    root, other = tmp_path / "site", tmp_path / "other"
    names = tree(root, tmp_path / "outside")
    (other / "sub").mkdir(parents=True)
    (other / "b.css.gz").write_bytes(b"in another directory")  # found first when listed first
    app = StaticFiles(directory=root, follow_symlink=follow_symlink)
    if several:
        app.all_directories = [other, root]
    for request in names:
        full_path, stat_result = app.lookup_path(request)
        assert stat_result is not None, request
        relative = app._relative(full_path)
        assert relative is not None, request
        expected = {}
        for coding, sibling in [("br", relative + ".br"), ("gzip", relative + ".gz")]:
            path, found = StarletteStaticFiles.lookup_path(app, sibling)
            if found is not None and os.path.isfile(path):
                expected[coding] = (path, found)
        got = app._siblings(relative, full_path)
        assert {coding: (path, found.st_ino) for coding, (path, found) in got.items()} == {
            coding: (path, found.st_ino) for coding, (path, found) in expected.items()
        }, (request, follow_symlink, several)


def test_relative_is_the_path_under_its_root(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    app = StaticFiles(directory=tmp_path)
    root = os.path.realpath(tmp_path)
    assert app._relative(os.path.join(root, "sub", "x.css")) == os.path.join("sub", "x.css")
    assert app._relative(root + "-sibling/x.css") is None  # a prefix of the name is no parent
    assert app._relative("/elsewhere/x.css") is None
