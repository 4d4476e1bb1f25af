"""A file's body parts over ASGI: the zero-copy messages when the server advertises them,
``http.response.body`` messages read from the file otherwise; and ``HandoffApp``, the ASGI
middleware by which a server answers ``X-Sendfile`` / ``X-Accel-Redirect`` with the file."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import aclosing
from typing import Any, Protocol

import anyio
import anyio.to_thread

import fastbody

from ..asgi import EXTENSIONS, PATHSEND, ZEROCOPYSEND
from .answer import FileRange, Part
from .handoff import NOT_FOUND, REFUSED_LOG, HandedOff, Handoff, Refused, hand_off, without_handoff

CHUNK_SIZE = 64 * 1024
"""Bytes per ``http.response.body`` message on the fallback path (FileResponse's chunk size)."""

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]
App = Callable[[Message, Receive, Send], Awaitable[Any]]

END_OF_BODY: dict[str, Any] = {"type": "http.response.body", "body": b"", "more_body": False}


class HasFileno(Protocol):
    def fileno(self) -> int: ...


async def send_parts(file: HasFileno, parts: list[Part], send: Send, *, zero_copy: bool) -> None:
    """Send ``parts`` after the head (``zero_copy``: as ``zerocopysend`` messages); the last
    message is the one with ``more_body=False``. No parts: just the end of the body."""
    if not parts:
        await send(END_OF_BODY)
    for index, part in enumerate(parts):
        more_body = index < len(parts) - 1
        if isinstance(part, bytes):
            await send({"type": "http.response.body", "body": part, "more_body": more_body})
        elif zero_copy:
            await send(
                {
                    "type": ZEROCOPYSEND,
                    "file": file,
                    "offset": part.offset,
                    "count": part.count,
                    "more_body": more_body,
                }
            )
        else:
            await copy_chunks(file_chunks(file, part), send)
            if not more_body:
                await send(END_OF_BODY)


async def copy_chunks(chunks: AsyncGenerator[bytes, None], send: Send) -> None:
    """Each chunk as an ``http.response.body`` message with more to come."""
    # aclosing: a disconnect cancels us mid-iteration; the generator must not wait for the GC.
    async with aclosing(chunks):
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})


def file_chunks(file: HasFileno, part: FileRange | None) -> AsyncGenerator[bytes, None]:
    """``part`` of the file (all of it for ``None``), read 64 KiB at a time off the loop, as
    FileResponse reads; from explicit offsets, whatever the file object's position. A file
    that shrank since its size was taken ends in ``IncompleteTransfer``, never a short body."""
    if part is None:
        return fastbody.achunks(fastbody.describe(file, offset=0), size=CHUNK_SIZE)
    source = fastbody.describe(file, offset=part.offset)
    return fastbody.achunks(fastbody.Source(source.body, part.count), size=CHUNK_SIZE)


# Handoff: a response naming a file by X-Sendfile / X-Accel-Redirect is answered with the file


BODY_MESSAGES = frozenset({"http.response.body", *EXTENSIONS})


StrHeaders = list[tuple[str, str]]


class HandoffApp:
    """ASGI middleware for servers that own the body of a handed-off file: a response whose
    ``http.response.start`` carries a handoff header ``handoff`` honours is answered with that
    file (ranges, conditionals, HEAD, validators), its parts sent as ``zerocopysend`` messages;
    the app's own body is dropped. A name ``handoff`` refuses is a 404 and one warning on
    ``log``. The ``send`` it wraps must take ``zerocopysend`` (fastbody's uvicorn protocols)."""

    def __init__(self, app: App, handoff: Handoff, log: logging.Logger) -> None:
        self.app = app
        self.handoff = handoff
        self.log = log

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> Any:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        return await self.app(scope, receive, HandoffSend(self, scope, send))


class HandoffSend:
    """One request's ``send`` under ``HandoffApp``: every message passes through until a head
    names a file; from then on the server answers and the app's body messages are accepted and
    dropped until its last (``more_body=False``)."""

    def __init__(self, owner: HandoffApp, scope: Message, send: Send) -> None:
        self.owner = owner
        self.scope = scope
        self.send = send
        self.dropping = False

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if self.dropping and kind in BODY_MESSAGES:
            self.dropping = kind != PATHSEND and bool(message.get("more_body", False))
            return
        if kind == "http.response.start":
            message = {**message, "headers": list(message.get("headers", []))}  # any iterable: read once
            headers = [(_text(name).lower(), _text(value)) for name, value in message["headers"]]
            named = self.owner.handoff.named(headers)
            if named is not None:
                await self._hand_off(message, headers, named)
                return
        await self.send(message)

    async def _hand_off(self, start: Message, headers: StrHeaders, named: tuple[str, str]) -> None:
        status = int(start["status"])
        if not fastbody.framing.body_allowed("GET", status):  # 1xx, 204, 304: no body to replace
            await self.send({**start, "headers": without_handoff(start["headers"])})
            return
        self.dropping = True  # set first: whatever happens below, the app's own body is not sent
        method = self.scope["method"]
        # Shielded: a cancellation while the thread opens the file would lose the open file.
        with anyio.CancelScope(shield=True):
            handed = await anyio.to_thread.run_sync(
                resolve, self.owner.handoff, named, method, request_headers(self.scope), status, headers
            )
        if isinstance(handed, Refused):
            self.owner.log.warning(REFUSED_LOG, handed, method, self.scope["path"])
            await self._not_found()
            return
        try:
            await self._send_answer(handed)
        finally:
            if handed.file is not None:
                handed.file.close()

    async def _send_answer(self, handed: HandedOff) -> None:
        found = handed.answer
        head = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in found.headers]
        await self.send({"type": "http.response.start", "status": found.status, "headers": head})
        if handed.file is None:
            await self.send(END_OF_BODY)
            return
        with contextlib.suppress(fastbody.TransferError):
            # The server has closed the connection and logged why (a client gone mid-body, a
            # file that shrank): the response is over, and the app need not hear of it.
            await send_parts(handed.file, found.parts, self.send, zero_copy=True)

    async def _not_found(self) -> None:
        head = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(NOT_FOUND))]
        await self.send({"type": "http.response.start", "status": 404, "headers": head})
        await self.send({"type": "http.response.body", "body": NOT_FOUND, "more_body": False})


def resolve(
    handoff: Handoff,
    named: tuple[str, str],
    method: str,
    request: Mapping[str, str],
    status: int,
    headers: StrHeaders,
) -> HandedOff | Refused:
    """``hand_off``, with a refusal returned rather than raised (it crosses a thread)."""
    try:
        return hand_off(handoff, named, method, request, status, headers)
    except Refused as refused:
        return refused


def request_headers(scope: Message) -> dict[str, str]:
    """The request's headers by lower-case name; repeated fields joined by commas (RFC 9110 5.3)."""
    fields: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = _text(raw_name).lower(), _text(raw_value)
        fields[name] = f"{fields[name]}, {value}" if name in fields else value
    return fields


def _text(field: bytes | str) -> str:
    """A header name or value as str (ASGI says bytes, latin-1; some apps give str)."""
    return field if isinstance(field, str) else bytes(field).decode("latin-1")
