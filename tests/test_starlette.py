"""ZeroCopyResponse and StaticFiles: the fallback path through Starlette's TestClient, and the
messages sent to a server that advertises the extensions (a recording ``send``)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles as StarletteStaticFiles
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope

import fastbody
from fastbody.integrations.starlette import (
    PATHSEND,
    SPLICESEND,
    ZEROCOPYSEND,
    StaticFiles,
    ZeroCopyResponse,
)

SIZE = 200_003  # several 64 KiB chunks and a short last one
ALL_EXTENSIONS: dict[str, dict[str, Any]] = {PATHSEND: {}, ZEROCOPYSEND: {}, SPLICESEND: {}}

ResponseFactory = Callable[[], Response]


@pytest.fixture
def blob() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
def data_file(tmp_path: Path, blob: bytes) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(blob)
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def client_for(**routes: ResponseFactory) -> TestClient:
    """A TestClient whose ``/<name>`` answers with ``routes[name]()`` (made per request)."""

    def endpoint(factory: ResponseFactory) -> Callable[[Any], Response]:
        return lambda request: factory()

    app = Starlette(
        routes=[
            Route(f"/{name}", endpoint(factory), methods=["GET", "HEAD", "POST"])
            for name, factory in routes.items()
        ]
    )
    return TestClient(app)


def file_and_zero_copy(path: Path, **kwargs: Any) -> TestClient:
    """``/file`` served by FileResponse, ``/zero`` by ZeroCopyResponse, with the same arguments."""
    return client_for(
        file=lambda: FileResponse(path, **kwargs),
        zero=lambda: ZeroCopyResponse(path, **kwargs),
    )


def fetch_both(
    client: TestClient, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[httpx.Response, httpx.Response]:
    """The same request to ``/file`` (FileResponse) and to ``/zero`` (ZeroCopyResponse)."""
    return client.request(method, "/file", headers=headers), client.request(method, "/zero", headers=headers)


def feed_socket(data: bytes) -> tuple[socket.socket, threading.Thread]:
    """One end of a socketpair; a thread writes ``data`` into the other end and closes it."""
    ours, theirs = socket.socketpair()

    def feed() -> None:
        with theirs:
            theirs.sendall(data)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    return ours, feeder


def multipart_parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(Content-Range, bytes) of each part of a multipart/byteranges body."""
    boundary = response.headers["content-type"].split("boundary=")[1].encode()
    body = response.content
    assert body.endswith(b"--" + boundary + b"--")
    parts = []
    for section in body[: -len(boundary) - 4].split(b"--" + boundary + b"\r\n")[1:]:
        head, _, content = section.partition(b"\r\n\r\n")
        assert content.endswith(b"\r\n")
        fields = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n"))
        parts.append((fields["Content-Range"], content[:-2]))
    return parts


# ---- paths, against FileResponse ---------------------------------------------------------------


def test_path_sends_the_file_with_file_response_headers(data_file: Path, blob: bytes) -> None:
    client = file_and_zero_copy(data_file, filename="report 1.bin")
    expected, got = fetch_both(client)
    assert got.status_code == 200
    assert sha256(got.content) == sha256(blob)
    assert got.headers == expected.headers
    assert got.headers["content-length"] == str(SIZE)
    assert "etag" in got.headers and "last-modified" in got.headers and "content-disposition" in got.headers


def test_path_headers_given_by_the_app_win_as_in_file_response(data_file: Path) -> None:
    headers = {"cache-control": "no-store", "etag": '"mine"'}
    client = file_and_zero_copy(data_file, headers=headers, media_type="text/plain")
    expected, got = fetch_both(client)
    assert got.headers == expected.headers
    assert got.headers["etag"] == '"mine"'


def test_single_range_is_206_with_content_range(data_file: Path, blob: bytes) -> None:
    client = file_and_zero_copy(data_file)
    expected, got = fetch_both(client, headers={"range": "bytes=100-70000"})
    assert got.status_code == 206
    assert got.content == blob[100:70001]
    assert got.headers["content-range"] == f"bytes 100-70000/{SIZE}"
    assert got.headers == expected.headers


def test_multiple_ranges_are_multipart_byteranges(data_file: Path, blob: bytes) -> None:
    client = file_and_zero_copy(data_file)
    expected, got = fetch_both(client, headers={"range": "bytes=0-9, 100000-150000, -5"})
    assert got.status_code == 206
    assert got.headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert int(got.headers["content-length"]) == len(got.content)
    assert multipart_parts(got) == [
        (f"bytes 0-9/{SIZE}", blob[:10]),
        (f"bytes 100000-150000/{SIZE}", blob[100000:150001]),
        (f"bytes {SIZE - 5}-{SIZE - 1}/{SIZE}", blob[-5:]),
    ]
    # Byte for byte what FileResponse sends, but for the random boundary.
    boundary = got.headers["content-type"].split("boundary=")[1]
    their_boundary = expected.headers["content-type"].split("boundary=")[1]
    assert got.content.replace(boundary.encode(), their_boundary.encode()) == expected.content


@pytest.mark.parametrize("http_range", ["bytes=999999999-", f"bytes={SIZE}-"])
def test_unsatisfiable_range_is_416(data_file: Path, http_range: str) -> None:
    client = file_and_zero_copy(data_file)
    expected, got = fetch_both(client, headers={"range": http_range})
    assert got.status_code == 416
    assert got.headers["content-range"] == f"bytes */{SIZE}"
    assert expected.status_code == 416
    assert (got.headers["content-length"], got.content) == ("0", b"")


@pytest.mark.parametrize("http_range", ["items=0-1", "bytes=5-1", "bytes=x-y", "bytes0-1"])
def test_a_range_that_does_not_parse_is_ignored(data_file: Path, blob: bytes, http_range: str) -> None:
    # RFC 9110 14.2: an unknown unit or an invalid range-spec is ignored (FileResponse: 400).
    client = file_and_zero_copy(data_file)
    expected, got = fetch_both(client, headers={"range": http_range})
    assert expected.status_code == 400
    assert (got.status_code, got.content) == (200, blob)
    assert got.headers["content-length"] == str(SIZE)


def test_if_range_that_does_not_match_gets_the_whole_file(data_file: Path, blob: bytes) -> None:
    client = file_and_zero_copy(data_file)
    etag = client.get("/zero").headers["etag"]
    matching = client.get("/zero", headers={"range": "bytes=0-9", "if-range": etag})
    stale = client.get("/zero", headers={"range": "bytes=0-9", "if-range": '"stale"'})
    assert (matching.status_code, matching.content) == (206, blob[:10])
    assert (stale.status_code, stale.content) == (200, blob)


def test_ranges_apply_to_get_only(data_file: Path, blob: bytes) -> None:
    client = file_and_zero_copy(data_file)
    got = client.post("/zero", headers={"range": "bytes=0-9"})
    assert (got.status_code, got.content) == (200, blob)


@pytest.mark.parametrize("request_headers", [{}, {"range": "bytes=0-9"}, {"range": "bytes=0-9,20-29"}])
def test_head_sends_headers_only(data_file: Path, request_headers: dict[str, str]) -> None:
    client = file_and_zero_copy(data_file)
    expected, got = fetch_both(client, "HEAD", request_headers)
    assert got.status_code == expected.status_code
    assert got.content == b""
    assert int(got.headers["content-length"]) > 0
    if "," not in request_headers.get("range", ""):  # a multipart boundary is random
        assert got.headers == expected.headers


def test_conditionals_are_answered_where_file_response_ignores_them(data_file: Path) -> None:
    # FileResponse itself never answers 304 or 412 (only StaticFiles answers 304): ZeroCopyResponse does.
    client = file_and_zero_copy(data_file)
    whole = client.get("/zero")
    etag, last_modified = whole.headers["etag"], whole.headers["last-modified"]
    expected, got = fetch_both(client, headers={"if-none-match": etag})
    assert (expected.status_code, got.status_code, got.content) == (200, 304, b"")
    assert (got.headers["etag"], got.headers["last-modified"]) == (etag, last_modified)
    assert "content-length" not in got.headers or got.headers["content-length"] == "0"
    assert client.get("/zero", headers={"if-modified-since": last_modified}).status_code == 304
    assert client.get("/zero", headers={"if-none-match": '"other"'}).status_code == 200
    failed = client.get("/zero", headers={"if-match": '"other"'})
    assert (failed.status_code, failed.content) == (412, b"")
    assert client.get("/zero", headers={"if-match": etag}).status_code == 200
    early = "Thu, 01 Jan 1970 00:00:01 GMT"
    assert client.get("/zero", headers={"if-unmodified-since": early}).status_code == 412
    assert client.get("/zero", headers={"if-unmodified-since": last_modified}).status_code == 200


def test_missing_path_fails_as_file_response_fails(tmp_path: Path) -> None:
    client = client_for(zero=lambda: ZeroCopyResponse(tmp_path / "missing"))
    with pytest.raises(RuntimeError, match="does not exist"):
        client.get("/zero")


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    got = client_for(zero=lambda: ZeroCopyResponse(empty)).get("/zero")
    assert (got.status_code, got.content, got.headers["content-length"]) == (200, b"", "0")
    assert got.headers["content-type"] == "text/plain; charset=utf-8"


# ---- file objects, sockets, pipes, iterators ---------------------------------------------------


def test_file_object_is_sent_from_its_position_and_closed(data_file: Path, blob: bytes) -> None:
    files: list[Any] = []

    def respond(count: int | None = None) -> Response:
        file = open(data_file, "rb")
        file.read(1000)  # a buffered file: its position is 1000, its fd's is further on
        files.append(file)
        return ZeroCopyResponse(file, count=count)

    client = client_for(rest=respond, some=lambda: respond(count=5000))
    rest, some = client.get("/rest"), client.get("/some")
    assert (rest.content, rest.headers["content-length"]) == (blob[1000:], str(SIZE - 1000))
    assert (some.content, some.headers["content-length"]) == (blob[1000:6000], "5000")
    assert rest.headers["content-type"] == "application/octet-stream"
    assert all(file.closed for file in files)


def test_socket_is_sent_until_it_ends(blob: bytes) -> None:
    sockets: list[socket.socket] = []

    def respond() -> Response:
        source, _ = feed_socket(blob)
        sockets.append(source)
        return ZeroCopyResponse(source, media_type="application/octet-stream")

    got = client_for(zero=respond).get("/zero")
    assert sha256(got.content) == sha256(blob)
    assert "content-length" not in got.headers
    assert sockets[0].fileno() == -1  # closed by the response


def test_socket_with_count_sends_count_bytes_and_leaves_the_rest(blob: bytes) -> None:
    source, _ = feed_socket(blob)
    got = client_for(zero=lambda: ZeroCopyResponse(source, count=70_000)).get("/zero")
    assert (got.content, got.headers["content-length"]) == (blob[:70_000], "70000")
    assert source.fileno() == -1


def test_socket_that_ends_before_count_is_an_incomplete_transfer(blob: bytes) -> None:
    source, _ = feed_socket(blob[:1000])
    client = client_for(zero=lambda: ZeroCopyResponse(source, count=5000))
    with pytest.raises(fastbody.IncompleteTransfer) as raised:
        client.get("/zero")
    assert (raised.value.sent, raised.value.expected) == (1000, 5000)
    assert source.fileno() == -1


def test_subprocess_pipe(data_file: Path, blob: bytes) -> None:
    processes: list[subprocess.Popen[bytes]] = []

    def respond() -> Response:
        process = subprocess.Popen(["cat", str(data_file)], stdout=subprocess.PIPE)
        processes.append(process)
        assert process.stdout is not None
        return ZeroCopyResponse(process.stdout, filename="data.bin")

    got = client_for(zero=respond).get("/zero")
    assert sha256(got.content) == sha256(blob)
    assert got.headers["content-disposition"] == 'attachment; filename="data.bin"'
    assert got.headers["content-type"] == "application/octet-stream"
    assert processes[0].wait(timeout=10) == 0
    assert processes[0].stdout is not None and processes[0].stdout.closed


def test_pipe_bytes_already_buffered_in_python_come_first(blob: bytes) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, blob[:5000])
    reader = open(read_end, "rb")
    assert reader.read(10) == blob[:10]  # the reader pulled all 5000 bytes into its buffer

    def finish() -> None:
        time.sleep(0.05)
        os.write(write_end, blob[5000:6000])
        os.close(write_end)

    threading.Thread(target=finish, daemon=True).start()
    got = client_for(zero=lambda: ZeroCopyResponse(reader)).get("/zero")
    assert got.content == blob[10:6000]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_iterators_are_plain_streaming_responses(kind: str, blob: bytes) -> None:
    def chunks() -> Iterator[bytes]:
        for start in range(0, SIZE, 50_000):
            yield blob[start : start + 50_000]

    async def async_chunks() -> AsyncIterator[bytes]:
        for chunk in chunks():
            yield chunk

    content = chunks() if kind == "sync" else async_chunks()
    got = client_for(zero=lambda: ZeroCopyResponse(content)).get("/zero")
    assert got.content == blob
    assert "content-length" not in got.headers


def test_what_cannot_be_sent_is_refused_at_once(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="no bytes"):
        ZeroCopyResponse(b"abc")
    with pytest.raises(TypeError, match="binary mode"), open(tmp_path / "t.txt", "w") as text:
        ZeroCopyResponse(text)
    with pytest.raises(TypeError, match="expected a path"):
        ZeroCopyResponse(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="count"):
        ZeroCopyResponse(tmp_path, count=1)


@pytest.mark.anyio
async def test_httpx_asgi_transport_gets_the_same_bytes(data_file: Path, blob: bytes) -> None:
    app = Starlette(routes=[Route("/", lambda request: ZeroCopyResponse(data_file))])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        got = await client.get("/", headers={"range": "bytes=-100"})
    assert (got.status_code, got.content) == (206, blob[-100:])


# ---- StaticFiles -------------------------------------------------------------------------------


def test_static_files_serve_as_starlette_static_files(data_file: Path, blob: bytes) -> None:
    directory = data_file.parent
    app = Starlette(
        routes=[
            Mount("/zero", StaticFiles(directory=directory)),
            Mount("/stock", StarletteStaticFiles(directory=directory)),
        ]
    )
    client = TestClient(app)
    got, expected = client.get("/zero/data.bin"), client.get("/stock/data.bin")
    assert (got.status_code, got.content) == (200, blob)
    assert got.headers["cache-control"] == "public, max-age=60"  # Starlette's sends none
    del got.headers["cache-control"]
    assert got.headers == expected.headers

    not_modified = client.get("/zero/data.bin", headers={"if-none-match": got.headers["etag"]})
    assert (not_modified.status_code, not_modified.content) == (304, b"")
    assert not_modified.headers["etag"] == got.headers["etag"]
    since = client.get("/zero/data.bin", headers={"if-modified-since": got.headers["last-modified"]})
    assert since.status_code == 304

    assert client.get("/zero/missing.bin").status_code == 404
    assert client.get("/zero/data.bin", headers={"range": "bytes=10-19"}).content == blob[10:20]


# ---- messages to a server that advertises the extensions ---------------------------------------


class RecordingServer:
    """A ``send`` that records messages and, as a server would, reads what each one hands over."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.body = b""

    async def send(self, message: Message) -> None:
        self.messages.append(message)
        kind = message["type"]
        if kind == "http.response.body":
            self.body += message["body"]
        elif kind == ZEROCOPYSEND:
            self.body += os.pread(message["file"].fileno(), message["count"], message["offset"])
        elif kind == PATHSEND:
            self.body += Path(message["path"]).read_bytes()
        elif kind == SPLICESEND:
            self.body += _read_all(message["source"], message["count"])

    @property
    def types(self) -> list[str]:
        return [message["type"] for message in self.messages]

    @property
    def head(self) -> dict[str, str]:
        start = self.messages[0]
        return {name.decode(): value.decode() for name, value in start["headers"]}


def _read_all(source: Any, count: int | None) -> bytes:
    data = b""
    while count is None or len(data) < count:
        size = 65536 if count is None else min(65536, count - len(data))
        chunk = source.recv(size) if isinstance(source, socket.socket) else source.read1(size)
        if not chunk:
            break
        data += chunk
    return data


def scope_for(method: str = "GET", extensions: dict[str, Any] | None = None, **headers: str) -> Scope:
    return {
        "type": "http",
        "method": method,
        "path": "/",
        "headers": [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()],
        "extensions": ALL_EXTENSIONS if extensions is None else extensions,
    }


async def never_disconnects() -> Message:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


async def serve(response: Response, scope: Scope, receive: Receive = never_disconnects) -> RecordingServer:
    server = RecordingServer()
    await response(scope, receive, server.send)
    return server


@pytest.mark.anyio
async def test_two_ranges_are_body_zerocopysend_body_zerocopysend_body(data_file: Path, blob: bytes) -> None:
    server = await serve(ZeroCopyResponse(data_file), scope_for(range="bytes=0-9,100000-149999"))
    assert server.types == [
        "http.response.start",
        "http.response.body",
        ZEROCOPYSEND,
        "http.response.body",
        ZEROCOPYSEND,
        "http.response.body",
    ]
    start, boundary1, first, boundary2, second, end = server.messages
    assert start["status"] == 206
    assert (first["offset"], first["count"], first["more_body"]) == (0, 10, True)
    assert (second["offset"], second["count"], second["more_body"]) == (100_000, 50_000, True)
    assert boundary1["more_body"] and boundary2["more_body"] and not end["more_body"]
    assert boundary2["body"].startswith(b"\r\n--") and end["body"].startswith(b"\r\n--")
    assert first["file"] is second["file"] and first["file"].closed  # opened once, closed at the end
    assert int(server.head["content-length"]) == len(server.body)
    assert blob[:10] in server.body and blob[100_000:150_000] in server.body


@pytest.mark.anyio
async def test_whole_path_is_one_zerocopysend_with_the_full_count(data_file: Path, blob: bytes) -> None:
    server = await serve(ZeroCopyResponse(data_file), scope_for())
    assert server.types == ["http.response.start", ZEROCOPYSEND]
    zero_copy = server.messages[1]
    assert (zero_copy["offset"], zero_copy["count"], zero_copy["more_body"]) == (0, SIZE, False)
    assert zero_copy["file"].closed
    assert server.body == blob


@pytest.mark.anyio
async def test_single_range_is_one_zerocopysend(data_file: Path) -> None:
    server = await serve(ZeroCopyResponse(data_file), scope_for(range="bytes=-100"))
    assert server.types == ["http.response.start", ZEROCOPYSEND]
    assert (server.messages[1]["offset"], server.messages[1]["count"]) == (SIZE - 100, 100)
    assert server.head["content-range"] == f"bytes {SIZE - 100}-{SIZE - 1}/{SIZE}"


@pytest.mark.anyio
async def test_pathsend_when_only_pathsend_is_advertised(data_file: Path, blob: bytes) -> None:
    only_pathsend: dict[str, Any] = {PATHSEND: {}}
    whole = await serve(ZeroCopyResponse(data_file), scope_for(extensions=only_pathsend))
    assert whole.types == ["http.response.start", PATHSEND]
    assert whole.messages[1]["path"] == str(data_file)
    ranged = await serve(ZeroCopyResponse(data_file), scope_for(extensions=only_pathsend, range="bytes=0-9"))
    assert ranged.types[1:] == ["http.response.body"] * len(ranged.types[1:])
    assert ranged.body == blob[:10]


@pytest.mark.anyio
async def test_no_extension_means_body_messages(data_file: Path, blob: bytes) -> None:
    server = await serve(ZeroCopyResponse(data_file), scope_for(extensions={}))
    assert set(server.types[1:]) == {"http.response.body"}
    assert server.body == blob


@pytest.mark.anyio
async def test_head_with_extensions_sends_no_body(data_file: Path) -> None:
    server = await serve(ZeroCopyResponse(data_file), scope_for("HEAD"))
    assert server.types == ["http.response.start", "http.response.body"]
    assert server.messages[1] == {"type": "http.response.body", "body": b"", "more_body": False}


@pytest.mark.anyio
async def test_file_object_is_one_zerocopysend_from_its_position(data_file: Path, blob: bytes) -> None:
    file = open(data_file, "rb")
    file.seek(1234)
    server = await serve(ZeroCopyResponse(file, count=1000), scope_for())
    assert server.types == ["http.response.start", ZEROCOPYSEND]
    assert (server.messages[1]["offset"], server.messages[1]["count"]) == (1234, 1000)
    assert server.messages[1]["file"] is file and file.closed
    assert server.body == blob[1234:2234]


@pytest.mark.anyio
async def test_socket_is_one_splicesend_with_count(blob: bytes) -> None:
    source, _ = feed_socket(blob)
    server = await serve(ZeroCopyResponse(source, count=4096), scope_for())
    assert server.types == ["http.response.start", SPLICESEND]
    splice = server.messages[1]
    assert (splice["source"], splice["count"], splice["more_body"]) == (source, 4096, False)
    assert server.head["content-length"] == "4096"
    assert server.body == blob[:4096]
    assert source.fileno() == -1


@pytest.mark.anyio
async def test_pipe_without_count_is_splicesend_without_length(data_file: Path, blob: bytes) -> None:
    process = subprocess.Popen(["cat", str(data_file)], stdout=subprocess.PIPE)
    assert process.stdout is not None
    server = await serve(ZeroCopyResponse(process.stdout), scope_for())
    assert server.types == ["http.response.start", SPLICESEND]
    assert server.messages[1]["count"] is None
    assert "content-length" not in server.head
    assert server.body == blob
    assert process.wait(timeout=10) == 0


@pytest.mark.anyio
async def test_disconnect_closes_a_socket_that_never_sends() -> None:
    # The fallback waits for the socket on the event loop: a disconnect must end the wait.
    source, silent_peer = socket.socketpair()
    disconnected = anyio.Event()

    async def receive() -> Message:
        await anyio.sleep(0.05)
        disconnected.set()
        return {"type": "http.disconnect"}

    with silent_peer, anyio.fail_after(5):
        server = await serve(ZeroCopyResponse(source), scope_for(extensions={}), receive)
    assert disconnected.is_set()
    assert server.types == ["http.response.start"]
    assert source.fileno() == -1


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.anyio
@pytest.mark.parametrize("zero_copy", [True, False])
async def test_disconnect_closes_the_file_of_a_path(data_file: Path, zero_copy: bool) -> None:
    body_messages: list[Message] = []

    async def receive() -> Message:
        await anyio.sleep(0.01)
        return {"type": "http.disconnect"}

    async def stalled_send(message: Message) -> None:
        if message["type"] != "http.response.start":
            body_messages.append(message)
            await anyio.sleep_forever()  # a client that stopped reading

    before = open_fds()
    scope = scope_for(extensions=ALL_EXTENSIONS if zero_copy else {}, range="bytes=0-9,20-29")
    with anyio.fail_after(5):
        await ZeroCopyResponse(data_file)(scope, receive, stalled_send)
    assert len(body_messages) == 1  # the first boundary: the file was open
    assert open_fds() == before


def test_the_apps_own_headers_survive_304_412_and_416(data_file: Path) -> None:
    own = {"set-cookie": "s=1", "x-request-id": "42", "access-control-allow-origin": "*"}
    client = client_for(zero=lambda: ZeroCopyResponse(data_file, headers=own))
    etag = client.get("/zero").headers["etag"]
    for request_headers, status in [
        ({"if-none-match": etag}, 304),
        ({"if-match": '"nope"'}, 412),
        ({"range": f"bytes={SIZE}-"}, 416),
    ]:
        got = client.get("/zero", headers=request_headers)
        assert got.status_code == status
        assert {name: got.headers.get(name) for name in own} == own, status
