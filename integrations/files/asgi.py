"""A file's body parts over ASGI: the zero-copy messages when the server advertises them,
``http.response.body`` messages read from the file otherwise."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, MutableMapping
from contextlib import aclosing
from typing import Any, Protocol

import fastbody

from ..asgi import ZEROCOPYSEND
from .answer import FileRange, Part

CHUNK_SIZE = 64 * 1024
"""Bytes per ``http.response.body`` message on the fallback path (FileResponse's chunk size)."""

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]

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
