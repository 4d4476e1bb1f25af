"""Starlette responses whose bodies the server moves by sendfile or splice.

    from fastbody.integrations.starlette import StaticFiles, ZeroCopyResponse

    async def download(request: Request) -> Response:
        return ZeroCopyResponse("big.iso")  # FileResponse's headers; ranges, 304/412 per RFC 9110

    async def relay(request: Request) -> Response:
        upstream = subprocess.Popen(["cat", "big.iso"], stdout=subprocess.PIPE)
        return ZeroCopyResponse(upstream.stdout, media_type="application/octet-stream")

    app = Starlette(routes=[..., Mount("/static", StaticFiles(directory="static"))])

``ZeroCopyResponse`` hands its body to the server in one message per piece when the server
advertises the extension in ``scope["extensions"]`` (fastbody's uvicorn protocol does):

| content | message, when advertised | otherwise |
|---|---|---|
| path | ``http.response.zerocopysend`` per byte range (1) | 64 KiB reads in a thread, as FileResponse |
| binary file object | ``http.response.zerocopysend`` from its position | 64 KiB reads in a thread |
| socket, pipe, FIFO | ``fastbody.response.splicesend`` | reads as bytes arrive, on the event loop |
| (async) iterator of bytes | ``http.response.body`` per chunk (plain StreamingResponse) | the same |

(1) Multipart boundaries are ``http.response.body`` messages between the ranges. A whole file
goes as ``http.response.pathsend`` when only that extension is advertised, as FileResponse does.

Under any other server (Starlette's ``TestClient``, httpx's ``ASGITransport``, stock uvicorn)
the same bytes go out as ordinary ``http.response.body`` messages.
"""

from __future__ import annotations

import errno
import functools
import io
import math
import os
import stat
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from contextlib import aclosing, asynccontextmanager, suppress
from dataclasses import dataclass
from functools import partial
from mimetypes import guess_type
from typing import Any, cast

import anyio
import anyio.to_thread
from starlette import staticfiles
from starlette.background import BackgroundTask
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import (
    ContentStream,
    FileResponse,
    Response,
    StreamingResponse,
)
from starlette.types import Receive, Scope, Send

import fastbody

from . import files
from .asgi import PATHSEND, SPLICESEND, ZEROCOPYSEND
from .files import representation
from .files.answer import FileRange, Part
from .files.asgi import CHUNK_SIZE, END_OF_BODY, HasFileno, copy_chunks, file_chunks, send_parts

__all__ = [
    "PATHSEND",
    "SPLICESEND",
    "ZEROCOPYSEND",
    "FileRange",
    "StaticFiles",
    "ZeroCopyResponse",
]


BodySender = Callable[[Send], Awaitable[None]]


@dataclass(frozen=True)
class _Reply:
    """What one request gets: a head, then whatever ``send_body`` sends.

    ``listens``: some of the body goes as ``http.response.body`` messages (bytes read here, or
    multipart boundaries). Only then does the response listen for ``http.disconnect`` beside
    sending (Starlette's per-response task group, which costs more than the rest of a small
    response): under ASGI 2.3 a server may drop, or hold, body messages to a closed
    connection, so only the listener would end the response. A body wholly in messages of an
    extension the server advertised (or no body) needs none: the server moves those bytes
    itself and ends the transfer when the client goes (``send`` raises ``PeerClosedError``),
    as for ``FileResponse``'s ``pathsend``.

    ``opened``: the file this reply opened for its body; closed when the response is over.
    """

    status: int
    headers: list[tuple[bytes, bytes]]
    send_body: BodySender
    listens: bool
    opened: io.FileIO | None = None

    def close(self) -> None:
        if self.opened is not None:
            self.opened.close()


class ZeroCopyResponse(StreamingResponse):
    """A response whose body the server sends with sendfile or splice when it can.

    ``content`` is a path, a binary file object, a socket or pipe (anything with a ``fileno()``
    that is a socket or FIFO, e.g. ``subprocess.Popen(...).stdout``), or an iterator or async
    iterator of bytes (then this is a plain ``StreamingResponse``).

    - A path gets the headers Starlette's ``FileResponse`` gives it (Content-Type,
      Content-Disposition for ``filename``, ETag, Last-Modified, Content-Length, Accept-Ranges)
      and is answered by ``fastbody.integrations.files.answer`` per RFC 9110: 304 and 412 for
      the conditionals (FileResponse answers neither), If-Range, 206 single and multipart
      ranges, 416, a Range that does not parse ignored (FileResponse: 400), HEAD; the app's own
      headers (Set-Cookie, ...) on every status. The response opens the file once per request, sends
      ``http.response.zerocopysend`` with an explicit offset and count per range (so the server
      never sends more than Content-Length promised, even if the file grew), and closes it.
    - A file object is sent from its current position: ``count`` bytes, or to the end of file.
    - A socket or pipe is sent until it ends, or ``count`` bytes (then Content-Length is set).
      If it ends before ``count``, ``fastbody.IncompleteTransfer`` is raised.

    Ownership: a file object, socket or pipe handed to the response belongs to it from then on
    and is closed once the response is over (sent, failed, or cancelled by a disconnect), as a
    ``FileResponse`` closes the file it opened. Close a ``Popen``'s process yourself (e.g. in a
    ``background`` task); the response closes only its stdout.

    ``count`` applies to file objects, sockets and pipes; ``stat_result`` to paths only.
    ``method="HEAD"`` sends headers only whatever the request's method (as older Starlette).
    """

    def __init__(
        self,
        content: str | os.PathLike[str] | HasFileno | ContentStream,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        background: BackgroundTask | None = None,
        *,
        count: int | None = None,
        filename: str | None = None,
        stat_result: os.stat_result | None = None,
        method: str | None = None,
        content_disposition_type: str = "attachment",
    ) -> None:
        if count is not None and count < 0:
            raise ValueError(f"count must be >= 0, not {count}")
        self.method = method
        self._reply: _Reply | None = None
        self._body: _PathBody | _FileBody | _StreamBody | None
        if isinstance(content, str | os.PathLike):
            if count is not None:
                raise ValueError("count applies to file objects, sockets and pipes; use a Range request")
            self._init_path(
                content, status_code, headers, media_type, filename, stat_result, content_disposition_type
            )
        elif _fileno(content) is not None:
            if stat_result is not None:
                raise ValueError("stat_result applies to paths only")
            body = _body_for_descriptor(cast(HasFileno, content), count)
            self._init_descriptor(body, status_code, headers, media_type, filename, content_disposition_type)
        elif isinstance(content, bytes | bytearray | memoryview):
            raise TypeError("ZeroCopyResponse takes no bytes: use Response(content) for a body in memory")
        elif isinstance(content, AsyncIterable | Iterable):
            if count is not None or stat_result is not None:
                raise ValueError("count and stat_result do not apply to iterators")
            self._body = None
            super().__init__(content, status_code, headers, media_type)
        else:
            raise TypeError(
                f"cannot send {type(content).__name__!r}: expected a path, a binary file, a socket, "
                "a pipe or an (async) iterator of bytes"
            )
        self.background = background

    def _init_path(
        self,
        path: str | os.PathLike[str],
        status_code: int,
        headers: Mapping[str, str] | None,
        media_type: str | None,
        filename: str | None,
        stat_result: os.stat_result | None,
        content_disposition_type: str,
    ) -> None:
        # A FileResponse builds the headers (media type, Accept-Ranges, Content-Disposition) and
        # the stat headers follow, in its order (now, or at request time for a path not yet
        # stat'ed): both responses share one header list.
        model = FileResponse(
            path,
            status_code,
            headers,
            media_type,
            filename=filename,
            content_disposition_type=content_disposition_type,
        )
        if stat_result is not None:
            _set_stat_headers(model.raw_headers, stat_result)
        self.status_code = status_code
        self.media_type = model.media_type
        self.raw_headers = model.raw_headers
        self._body = _PathBody(path, stat_result, model)
        self.body_iterator = _path_chunks(path)

    def _init_descriptor(
        self,
        body: _FileBody | _StreamBody,
        status_code: int,
        headers: Mapping[str, str] | None,
        media_type: str | None,
        filename: str | None,
        content_disposition_type: str,
    ) -> None:
        self.status_code = status_code
        self.media_type = media_type if media_type is not None else body.guess_media_type(filename)
        self.init_headers(headers)
        if body.length is not None and not (status_code < 200 or status_code in (204, 304)):
            self.headers.setdefault("content-length", str(body.length))
        if filename is not None:
            # FileResponse's own rule (quoting, filename*=), which touches no file system.
            named = FileResponse(
                filename, filename=filename, content_disposition_type=content_disposition_type
            )
            self.headers.setdefault("content-disposition", named.headers["content-disposition"])
        self._body = body
        self.body_iterator = body.chunks()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self._body
        if body is None:
            await super().__call__(scope, receive, send)
            return
        reply: _Reply | None = None
        try:
            reply = self._reply = await body.prepare(
                scope, self.status_code, self.raw_headers, self._head_only(scope)
            )
            if reply.listens or scope["type"] != "http":
                # StreamingResponse runs stream_response beside listen_for_disconnect (and
                # makes a websocket denial's messages websocket.http.response.*).
                await super().__call__(scope, receive, send)
                return
            # The server moves the body (or there is none): no task group, as FileResponse
            # sends pathsend (see _Reply).
            await self.stream_response(send)
            if self.background is not None:
                await self.background()
        finally:
            if reply is not None:
                reply.close()
            body.close()

    async def stream_response(self, send: Send) -> None:
        if self._reply is None:  # an iterator, or a caller that skipped __call__
            await super().stream_response(send)
            return
        reply = self._reply
        await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
        # A client gone or cut off: the server has closed the connection and logged why.
        with suppress(fastbody.PeerClosedError, fastbody.TransferTimeout):
            await reply.send_body(send)

    def _head_only(self, scope: Scope) -> bool:
        if scope["type"] != "http":
            return False
        method: str = self.method or scope["method"]
        return method.upper() == "HEAD"


class StaticFiles(staticfiles.StaticFiles):
    """Starlette's ``StaticFiles`` serving its files with ``ZeroCopyResponse``, with what
    whitenoise users expect:

    - ``precompressed=True``: ``x.css.br`` or ``x.css.gz`` beside ``x.css`` is sent for it when
      ``Accept-Encoding`` allows (``Content-Encoding``, ``Vary: Accept-Encoding``, the original's
      Content-Type, the sibling's own length and ETag; ranges apply to what is sent);
    - ``max_age=60``: ``Cache-Control: public, max-age=60`` (None: no header); a name carrying
      a content hash (``app.3f2a9c1b.js``) gets ``public, max-age=31536000, immutable``;
    - ``dotfiles=True``: serve names starting with a dot; False answers 404 for them (and for
      anything under a dot-directory), ``.well-known`` excepted (RFC 8615);
    - conditionals and ranges per RFC 9110 (304, 412, If-Range; a Range it cannot parse is
      ignored; 416 with ``Content-Range: bytes */SIZE``), from ``ZeroCopyResponse``.

    Content-Type: by name; a compressed file asked for by its own name (``x.css.gz``) is
    ``application/gzip`` (``application/x-brotli`` for ``.br``), unknown names
    ``application/octet-stream``. The ``404.html`` of ``html=True`` mode is still a plain
    ``FileResponse`` (Starlette builds it outside ``file_response``).
    """

    def __init__(
        self,
        *,
        directory: staticfiles.PathLike | None = None,
        packages: list[str | tuple[str, str]] | None = None,
        html: bool = False,
        check_dir: bool = True,
        follow_symlink: bool = False,
        precompressed: bool = True,
        max_age: int | None = 60,
        dotfiles: bool = True,
    ) -> None:
        super().__init__(
            directory=directory,
            packages=packages,
            html=html,
            check_dir=check_dir,
            follow_symlink=follow_symlink,
        )
        self.precompressed = precompressed
        self.max_age = max_age
        self.dotfiles = dotfiles
        self._recent = _Recent()  # the names lookup_path found as regular files lately

    async def get_response(self, path: str, scope: Scope) -> Response:
        if not self.dotfiles and _hidden(path):
            raise HTTPException(status_code=404)
        if scope["method"] in ("GET", "HEAD") and self._recent.fresh(path):
            found = self._lookup_on_the_loop(path)
            if found is not None:  # a regular file again: what Starlette's get_response does with it
                return self.file_response(*found, scope)
        return await super().get_response(path, scope)  # (its lookup in a worker thread)

    def _lookup_on_the_loop(self, path: str) -> tuple[str, os.stat_result] | None:
        """``lookup_path`` for a name found as a regular file moments ago (see ``_Recent``); None
        for anything else (gone, a directory, an error), which Starlette's way then answers."""
        try:
            full_path, stat_result = self.lookup_path(path)
        except (OSError, ValueError):
            return None
        if stat_result is None or not stat.S_ISREG(stat_result.st_mode):
            return None
        return full_path, stat_result

    def lookup_path(self, path: str) -> tuple[str, os.stat_result | None]:
        try:
            full_path, stat_result = super().lookup_path(path)
        except OSError as error:
            self._recent.lost(path)
            if error.errno != errno.ELOOP:
                raise
            return "", None  # a symlink loop names no file: a 404 (Starlette's own: a 500)
        if stat_result is not None and stat.S_ISREG(stat_result.st_mode):
            self._recent.found(path)
        else:
            self._recent.lost(path)
        return full_path, stat_result

    def file_response(
        self,
        full_path: staticfiles.PathLike,
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        name = os.fspath(full_path)
        if scope["path"].endswith("/") and not self._is_index(name, scope):
            # A file is no directory: /app.css/ is a 404, as whitenoise and nginx answer it
            # (Starlette's get_path drops the slash and would serve it under a second URL).
            raise HTTPException(status_code=404)
        relative = self._relative(name)
        if not self.dotfiles and relative is not None and _hidden(relative):
            raise HTTPException(status_code=404)  # a dot-name reached through a symlink
        headers: dict[str, str] = {}
        if (cache_control := representation.cache_control(name, self.max_age)) is not None:
            headers["cache-control"] = cache_control
        sent, sent_stat = full_path, stat_result
        siblings = {}
        if self.precompressed and relative and status_code == 200:
            siblings = self._siblings(relative, name)
        if siblings:
            headers["vary"] = "Accept-Encoding"
            accepted = representation.accepted_encodings(
                Headers(scope=scope).get("accept-encoding"), list(siblings)
            )
            if accepted:
                headers["content-encoding"] = accepted[0]
                sent, sent_stat = siblings[accepted[0]]
        return ZeroCopyResponse(
            sent,
            status_code=status_code,
            headers=headers,
            media_type=representation.media_type(name),  # the original's, whatever is sent
            stat_result=sent_stat,
        )

    def _is_index(self, name: str, scope: Scope) -> bool:
        """Whether ``name`` answers a directory's URL (``html=True``'s index.html)."""
        return (
            self.html
            and os.path.basename(name) == "index.html"
            and not self.get_path(scope).endswith("index.html")
        )

    def _siblings(self, relative: str, full_path: str) -> dict[str, tuple[str, os.stat_result]]:
        """The precompressed siblings of ``relative`` (found at ``full_path``) that exist, by
        coding: each looked up as a request for its own name would be (the same directories,
        the same symlink rule). On the loop: StaticFiles has just looked up the original in a
        thread, so these stats come from the dentry cache (nginx stats on its loop too)."""
        found: dict[str, tuple[str, os.stat_result]] = {}
        for coding, name in representation.sibling_names(relative):
            try:
                path, stat_result = self._lookup_beside(name, full_path + name[len(relative) :])
            except (OSError, ValueError):  # a name too long, a NUL, none there: no sibling
                continue
            if stat_result is not None and stat.S_ISREG(stat_result.st_mode):
                found[coding] = (path, stat_result)
        return found

    def _lookup_beside(self, name: str, beside: str) -> tuple[str, os.stat_result | None]:
        """``lookup_path(name)`` for the sibling ``name`` of a file ``lookup_path`` resolved,
        whose sibling in the same directory is ``beside``; with one stat when that gives the
        same answer (``lookup_path`` resolves every component of the path, one lstat each).

        With one served directory, ``lookup_path(name)`` resolves to ``beside`` itself:
        the original's path is resolved already (its directory lies inside the root), so only
        the sibling's last component could still be a symlink. ``follow_symlink``: the names
        are only made absolute, and stat follows links as ``lookup_path``'s does. Otherwise a
        sibling that is no symlink is ``beside``; a symlink, or several directories (an
        earlier one may hold the sibling), take ``lookup_path``'s own way. A sibling that is
        not there raises ``FileNotFoundError``, where ``lookup_path`` gives ``("", None)``."""
        if len(self.all_directories) == 1:
            if self.follow_symlink:
                return beside, os.stat(beside)
            stat_result = os.lstat(beside)
            if not stat.S_ISLNK(stat_result.st_mode):
                return beside, stat_result
        return self.lookup_path(name)

    def _relative(self, full_path: str) -> str | None:
        """``full_path`` as a path under one of the served directories (as ``get_path`` gives
        them), or None for a file served from elsewhere (a ``packages`` directory it left).
        Both are resolved (``lookup_path``'s and ``_roots``' rule), so being under a root is
        a matter of its prefix."""
        for root in self._roots:
            prefix = root if root.endswith(os.sep) else root + os.sep
            if full_path.startswith(prefix):
                return full_path[len(prefix) :]
        return None

    @functools.cached_property
    def _roots(self) -> list[str]:
        """The served directories as ``lookup_path`` resolves them, once (not per request)."""
        resolve = os.path.abspath if self.follow_symlink else os.path.realpath
        return [resolve(directory) for directory in self.all_directories]


def _hidden(path: str) -> bool:
    """Whether a request path (``StaticFiles.get_path``'s, OS separators) names a dotfile or
    lies under a dot-directory; ``.well-known`` (RFC 8615) is not hidden."""
    return any(part.startswith(".") and part not in (".", ".well-known") for part in path.split(os.sep))


# ---- the three kinds of body -------------------------------------------------------------------


class _PathBody:
    """A file named by a path: FileResponse's headers; ranges and conditionals as
    ``fastbody.integrations.files.answer`` decides them."""

    def __init__(
        self, path: str | os.PathLike[str], stat_result: os.stat_result | None, model: FileResponse
    ) -> None:
        self.path = path
        self.stat_result = stat_result
        self.model = model

    async def prepare(
        self, scope: Scope, status: int, headers: list[tuple[bytes, bytes]], head_only: bool
    ) -> _Reply:
        stat_result = self.stat_result
        if stat_result is None:
            stat_result = await _stat_file(self.path)
            _set_stat_headers(self.model.raw_headers, stat_result)
        # (Given at construction, the model has its stat headers already.)
        fields = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]
        method = "HEAD" if head_only else (scope["method"] if scope["type"] == "http" else "GET")
        # By name, the last of a repeated field winning (as dict(Headers(scope=scope).items())).
        request = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        found = files.answer(method, request, fields, stat_result.st_size, status=status)
        head = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in found.headers]
        whole = found.status == status and found.parts == [FileRange(0, stat_result.st_size)]
        return await self._reply(found.status, head, found.parts, _extensions(scope), whole=whole)

    async def _reply(
        self,
        status: int,
        head: list[tuple[bytes, bytes]],
        parts: list[Part],
        extensions: Mapping[str, Any],
        *,
        whole: bool,
    ) -> _Reply:
        if not parts:
            return _Reply(status, head, _send_end, listens=False)
        zero_copy = ZEROCOPYSEND in extensions
        if whole and not zero_copy and PATHSEND in extensions:
            return _Reply(status, head, partial(_send_pathsend, self.path), listens=False)
        # No await between the open and the reply owning the file (nothing can be lost to a
        # cancellation); without the extensions the engine then reads it, in threads, as
        # FileResponse does.
        file = await _open_file(self.path)
        send_body = partial(send_parts, file, parts, zero_copy=zero_copy)
        boundaries = any(isinstance(part, bytes) for part in parts)  # multipart
        return _Reply(status, head, send_body, listens=boundaries or not zero_copy, opened=file)

    def chunks(self) -> AsyncGenerator[bytes, None]:
        return _path_chunks(self.path)

    def close(self) -> None:
        """Nothing to close: each reply closes the file it opened."""


class _FileBody:
    """A binary file object handed in by the app: sent from its position, then closed."""

    def __init__(self, file: HasFileno, source: fastbody.Source) -> None:
        self.file = file
        # Where a read() would start (a buffered file's tell() counts its buffer), and what is
        # left; a count past the end is refused here, before any head could promise it.
        self.offset: int = source.offset or 0
        self.length: int = source.length or 0

    async def prepare(
        self, scope: Scope, status: int, headers: list[tuple[bytes, bytes]], head_only: bool
    ) -> _Reply:
        parts: list[Part] = [] if head_only else [FileRange(self.offset, self.length)]
        if not parts:
            return _Reply(status, headers, _send_end, listens=False)
        zero_copy = ZEROCOPYSEND in _extensions(scope)
        send_body = partial(send_parts, self.file, parts, zero_copy=zero_copy)
        return _Reply(status, headers, send_body, listens=not zero_copy)

    def guess_media_type(self, filename: str | None) -> str:
        """From ``filename`` or the file's own name; octet-stream otherwise, as FileResponse."""
        name = filename if filename is not None else getattr(self.file, "name", None)
        guessed = guess_type(name)[0] if isinstance(name, str) else None
        return guessed or "application/octet-stream"

    def chunks(self) -> AsyncGenerator[bytes, None]:
        return file_chunks(self.file, FileRange(self.offset, self.length))

    def close(self) -> None:
        _close(self.file)


class _StreamBody:
    """A socket or pipe handed in by the app: sent until its end (or ``count``), then closed."""

    def __init__(self, stream: HasFileno, count: int | None) -> None:
        self.stream = stream
        self.length = count

    async def prepare(
        self, scope: Scope, status: int, headers: list[tuple[bytes, bytes]], head_only: bool
    ) -> _Reply:
        if head_only:
            return _Reply(status, headers, _send_end, listens=False)
        if SPLICESEND in _extensions(scope):
            return _Reply(status, headers, partial(_send_splice, self.stream, self.length), listens=False)
        return _Reply(status, headers, partial(_copy_stream, self.stream, self.length), listens=True)

    def guess_media_type(self, filename: str | None) -> str | None:
        """From ``filename``; none otherwise, as StreamingResponse."""
        return guess_type(filename)[0] if filename is not None else None

    def chunks(self) -> AsyncGenerator[bytes, None]:
        return _stream_chunks(self.stream, self.length)

    def close(self) -> None:
        _close(self.stream)


# ---- sending -----------------------------------------------------------------------------------


async def _send_end(send: Send) -> None:
    await send(END_OF_BODY)


async def _send_pathsend(path: str | os.PathLike[str], send: Send) -> None:
    await send({"type": PATHSEND, "path": str(path)})


async def _send_splice(stream: HasFileno, count: int | None, send: Send) -> None:
    await send({"type": SPLICESEND, "source": stream, "count": count, "more_body": False})


async def _copy_stream(stream: HasFileno, count: int | None, send: Send) -> None:
    await copy_chunks(_stream_chunks(stream, count), send)
    await send(END_OF_BODY)


# ---- reading, for servers without the extensions -----------------------------------------------


async def _path_chunks(path: str | os.PathLike[str]) -> AsyncGenerator[bytes, None]:
    async with _opened(path) as file, aclosing(file_chunks(file, None)) as chunks:
        async for chunk in chunks:
            yield chunk


def _stream_chunks(stream: HasFileno, count: int | None) -> AsyncGenerator[bytes, None]:
    """A socket's or pipe's bytes as they arrive, until its end or ``count``: waited for on the
    loop, so that a disconnect cancels the wait at once (a thread blocked in ``read`` would
    hold the response until the source sends again)."""
    return fastbody.achunks(fastbody.describe(stream, count=count), size=CHUNK_SIZE)


@asynccontextmanager
async def _opened(path: str | os.PathLike[str]) -> AsyncIterator[io.BufferedReader]:
    # Shielded: a cancellation delivered while the thread opens the file would lose the open file.
    with anyio.CancelScope(shield=True):
        file = await anyio.to_thread.run_sync(_open_binary, path)
    try:
        yield file
    finally:
        file.close()


# ---- what the content is -----------------------------------------------------------------------


def _open_binary(path: str | os.PathLike[str]) -> io.BufferedReader:
    return open(path, "rb")


async def _open_file(path: str | os.PathLike[str]) -> io.FileIO:
    """The file for a body the server or the engine reads by its fd (no buffer). Its stat was
    taken just now (by StaticFiles, or by ``prepare``), so its name is in the kernel's caches:
    it opens on the loop (as nginx opens on its own), non-blocking, so that a FIFO put in the
    file's place cannot block the loop. A file under a lease (Samba's oplocks, a sync daemon)
    says EWOULDBLOCK to that at once: it opens in a thread then (shielded: a cancellation
    during the open would lose the file), waiting for the lease's holder to let go, as
    FileResponse's open does."""
    name = os.fspath(path)
    with suppress(BlockingIOError):
        return _checked_file(os.open(name, _OPEN_NOW), name)
    with anyio.CancelScope(shield=True):
        file = await anyio.to_thread.run_sync(_open_regular_file, name)
    return file


_OPEN_NOW = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


def _open_regular_file(name: str) -> io.FileIO:
    try:
        fd = os.open(name, _OPEN_NOW)
    except BlockingIOError:  # a lease: its holder is told, the open waits until it lets go
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
    return _checked_file(fd, name)


def _checked_file(fd: int, name: str) -> io.FileIO:
    """``fd`` as a file, if it still is a regular file (the name was stat'ed as one before)."""
    file = io.FileIO(fd, "r")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        file.close()
        raise RuntimeError(f"File at path {name} is not a file.")
    return file


def _fileno(content: object) -> int | None:
    """The fd of ``content``, or None for iterators and file-likes without one (``io.BytesIO``)."""
    if isinstance(content, bytes | bytearray | memoryview | AsyncIterable) or not hasattr(content, "fileno"):
        return None
    if isinstance(content, io.TextIOBase):
        raise TypeError(f"cannot send text file {content!r}: open it in binary mode")
    try:
        fd = content.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation; a closed file
        if getattr(content, "closed", False):
            raise ValueError(f"cannot send {content!r}: it is closed") from None
        return None
    if isinstance(fd, int) and fd < 0:  # a closed socket
        raise ValueError(f"cannot send {content!r}: it is closed")
    return fd if isinstance(fd, int) else None


def _body_for_descriptor(content: HasFileno, count: int | None) -> _FileBody | _StreamBody:
    source = fastbody.describe(content, count=count)
    if source.kind == "file":
        return _FileBody(content, source)
    if source.kind in ("socket", "pipe"):
        return _StreamBody(content, count)
    raise TypeError(f"cannot send {type(content).__name__!r}: its fd is neither a file, a socket nor a pipe")


def _extensions(scope: Scope) -> Mapping[str, Any]:
    if scope["type"] != "http":
        return {}
    extensions: Mapping[str, Any] = scope.get("extensions") or {}
    return extensions


class _Recent:
    """Names found as regular files in the last ``seconds``: where the next lookup of one runs.

    A name looked up moments ago has its dentries and inode in the kernel's caches (a network
    file system's attributes too, for longer than this), so looking it up again takes
    microseconds, and a worker-thread hop would cost the loop more than the lookup: it runs on
    the loop (the reasoning of ``StaticFiles._siblings``; nginx stats on its loop). A name not
    found lately may wait for a disk or a server, so it goes to a thread. Every response still
    looks its file up afresh: only the place changes, never an answer. At most ``size`` names
    are remembered, the least recently found forgotten first; an instance may be shared by
    loops in several threads (each dict operation is atomic)."""

    def __init__(self, seconds: float = 1.0, size: int = 1024) -> None:
        self.seconds = seconds
        self.size = size
        self.last: dict[str, float] = {}  # name → when it was last found; oldest first

    def fresh(self, name: str) -> bool:
        return time.monotonic() - self.last.get(name, -math.inf) < self.seconds

    def found(self, name: str) -> None:
        self.last.pop(name, None)  # (re-inserted: the newest)
        self.last[name] = time.monotonic()
        if len(self.last) > self.size:
            with suppress(StopIteration, KeyError, RuntimeError):  # (another thread got there first)
                del self.last[next(iter(self.last))]

    def lost(self, name: str) -> None:
        self.last.pop(name, None)


_RECENT = _Recent()
"""The paths ``ZeroCopyResponse`` stat'ed lately."""


async def _stat_file(path: str | os.PathLike[str]) -> os.stat_result:
    """``_stat_regular_file``, on the loop for a path stat'ed moments ago, else in a thread."""
    name = os.fspath(path)
    try:
        if _RECENT.fresh(name):
            stat_result = _stat_regular_file(name)
        else:
            stat_result = await anyio.to_thread.run_sync(_stat_regular_file, name)
    except BaseException:
        _RECENT.lost(name)
        raise
    _RECENT.found(name)
    return stat_result


def _stat_regular_file(path: str | os.PathLike[str]) -> os.stat_result:
    """``os.stat``, failing as FileResponse fails for a missing path or a non-file."""
    try:
        stat_result = os.stat(path)
    except FileNotFoundError:
        raise RuntimeError(f"File at path {path} does not exist.") from None
    if not stat.S_ISREG(stat_result.st_mode):
        raise RuntimeError(f"File at path {path} is not a file.")
    return stat_result


def _set_stat_headers(raw_headers: list[tuple[bytes, bytes]], stat_result: os.stat_result) -> None:
    """``FileResponse.set_stat_headers``: Content-Length, Last-Modified and ETag, in that order,
    each unless the app gave it (its ``setdefault``); the validators made once per version of
    a file (their md5 and date cost more than the rest of the head)."""
    etag, last_modified = _validators(stat_result.st_size, stat_result.st_mtime)
    present = {name for name, _ in raw_headers}
    stat_headers = (
        (b"content-length", b"%d" % stat_result.st_size),
        (b"last-modified", last_modified),
        (b"etag", etag),
    )
    raw_headers += [(name, value) for name, value in stat_headers if name not in present]


@functools.lru_cache(maxsize=1024)
def _validators(size: int, mtime: float) -> tuple[bytes, bytes]:
    """ETag and Last-Modified of a file of ``size`` bytes modified at ``mtime`` (FileResponse's)."""
    etag, last_modified = representation.validators(size, mtime)
    return etag.encode("latin-1"), last_modified.encode("latin-1")


def _close(source: object) -> None:
    close = getattr(source, "close", None)
    if callable(close):
        close()
