"""What a source is: turn whatever the caller handed in into a ``Body`` the pump can move.

Classification looks at the object and, for objects with an fd, at what the fd refers to
(``fstat``); it sends nothing. A path is opened here, and the resulting body owns that file.
"""

from __future__ import annotations

import enum
import io
import os
import ssl
import stat
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import IO, Any

from . import syscalls


class StreamKind(enum.Enum):
    SOCKET = "socket"
    PIPE = "pipe"  # pipe or FIFO: splice straight to the socket
    OTHER = "other"  # character device and the like: read and copy


@dataclass
class FileBody:
    """A regular file: sent by sendfile from ``offset``."""

    fd: int
    offset: int
    size: int
    file: IO[bytes] | None  # the caller's file whose position follows the bytes sent, if any
    owned: IO[bytes] | None  # a file fastbody opened from a path and closes when done

    @property
    def length(self) -> int:
        return max(self.size - self.offset, 0)


@dataclass
class StreamBody:
    """A socket, pipe or device read until EOF (or ``count``)."""

    fd: int
    kind: StreamKind
    buffered: io.BufferedReader | None = None  # bytes already read into Python come first
    tls: ssl.SSLSocket | None = None  # a TLS socket is read through its object: no splice

    length = None


@dataclass
class ReaderBody:
    """A file-like object with no usable fd (``io.BytesIO``, a decompressor, ...)."""

    reader: Any
    length: int | None = None  # what a seekable one has left from its position


@dataclass
class ChunksBody:
    """Bytes-like objects handed over one after another (a bytes object is a single chunk)."""

    chunks: Iterator[Any] | AsyncIterator[Any]
    is_async: bool
    length: int | None = None


Body = FileBody | StreamBody | ReaderBody | ChunksBody

_BYTES_LIKE = (bytes, bytearray, memoryview)
_BINARY_FILES = frozenset({io.BufferedReader, io.FileIO, io.BufferedRandom})  # never a path nor text


def classify(source: object, offset: int | None, *, allow_async: bool) -> Body:
    """The ``Body`` for ``source``; ``TypeError`` for what cannot be sent at all."""
    if type(source) in _BINARY_FILES:  # the common case first: no path, no text (two ABC checks saved)
        fd = _usable_fd(source)
        if fd is not None:
            return _fd_body(source, fd, offset)
    if isinstance(source, (str, os.PathLike)):
        owned = open(source, "rb")  # noqa: SIM115 - the body owns it; the pump closes it
        try:
            opened = owned.fileno()
            return _file_body(owned, opened, syscalls.file_size(opened), offset, owned=True)
        except BaseException:
            owned.close()
            raise
    if isinstance(source, io.TextIOBase):
        raise TypeError(f"cannot send text file {source!r}: open it in binary mode")
    fd = _usable_fd(source)
    if fd is not None:
        return _fd_body(source, fd, offset)
    _no_offset(offset, source)
    if isinstance(source, _BYTES_LIKE):
        view = memoryview(source).cast("B")
        return ChunksBody(iter([view]), is_async=False, length=len(view))
    if hasattr(source, "readinto") or hasattr(source, "read"):
        return ReaderBody(source, _left_to_read(source))
    if hasattr(source, "__aiter__"):
        if not allow_async:
            name = type(source).__name__
            raise TypeError(f"transfer() cannot consume async iterable {name!r}: use atransfer()")
        return ChunksBody(source.__aiter__(), is_async=True)
    if hasattr(source, "__iter__"):
        return ChunksBody(iter(source), is_async=False)
    raise TypeError(
        f"cannot send {type(source).__name__!r}: expected a path, binary file, socket, pipe, "
        "bytes-like object or (async) iterable of bytes"
    )


def _fd_body(source: object, fd: int, offset: int | None) -> Body:
    """A source with a usable fd: a regular file, or a socket, pipe or device read as a stream."""
    kind, size = syscalls.file_kind_and_size(fd)  # one fstat: a file needs both
    if kind == stat.S_IFREG:
        return _file_body(source, fd, size, offset, owned=False)
    _no_offset(offset, source)
    stream = {stat.S_IFSOCK: StreamKind.SOCKET, stat.S_IFIFO: StreamKind.PIPE}.get(kind, StreamKind.OTHER)
    return StreamBody(
        fd,
        stream,
        buffered=source if isinstance(source, io.BufferedReader) else None,
        tls=source if isinstance(source, ssl.SSLSocket) else None,
    )


def _usable_fd(source: object) -> int | None:
    fileno = getattr(source, "fileno", None)
    if fileno is None or isinstance(source, _BYTES_LIKE):
        return None
    try:
        fd = fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation (BytesIO), closed file
        return None
    if not isinstance(fd, int) or fd < 0:
        raise ValueError(f"cannot send {source!r}: it is closed")
    return fd


def _file_body(file: Any, fd: int, size: int, offset: int | None, *, owned: bool) -> FileBody:
    if offset is not None:
        return FileBody(fd, offset, size, file=None, owned=file if owned else None)
    # The caller's position, as a read would see it (a buffered file's tell() counts its buffer).
    position = file.tell() if hasattr(file, "tell") else os.lseek(fd, 0, os.SEEK_CUR)
    return FileBody(fd, position, size, file=file, owned=file if owned else None)


def _left_to_read(reader: Any) -> int | None:
    """The bytes a seekable file-like has from its position to its end (``None``: unknown)."""
    try:
        if not reader.seekable():
            return None
        position = reader.tell()
        end = reader.seek(0, os.SEEK_END)
        reader.seek(position)
    except (AttributeError, OSError, ValueError):
        return None
    return max(int(end) - int(position), 0)


def _no_offset(offset: int | None, source: object) -> None:
    if offset is not None:
        raise ValueError(f"offset applies to regular files only, not to {type(source).__name__!r}")


@dataclass
class Source:
    """What a source is, told before a byte of it moves (``fastbody.describe``): one
    description that every integration reads its length and kind from, and that ``transfer``
    and ``ResponseWriter`` take in place of the source itself."""

    body: Body
    count: int | None  # bytes to send; None: until the source ends

    @property
    def kind(self) -> str:
        """``file``, ``socket``, ``pipe``, ``device``, ``reader`` or ``chunks``."""
        body = self.body
        if isinstance(body, FileBody):
            return "file"
        if isinstance(body, StreamBody):
            return {StreamKind.SOCKET: "socket", StreamKind.PIPE: "pipe"}.get(body.kind, "device")
        return "reader" if isinstance(body, ReaderBody) else "chunks"

    @property
    def length(self) -> int | None:
        """The bytes a transfer will move, when that is known before it starts."""
        if self.body.length is None:
            return self.count
        return self.body.length if self.count is None else min(self.body.length, self.count)

    @property
    def fd(self) -> int | None:
        return self.body.fd if isinstance(self.body, FileBody | StreamBody) else None

    @property
    def offset(self) -> int | None:
        """Where a file's bytes start (its position, or the offset asked for)."""
        return self.body.offset if isinstance(self.body, FileBody) else None

    def close(self) -> None:
        """Close what fastbody opened (the file of a path); the caller's own objects stay open."""
        if isinstance(self.body, FileBody) and self.body.owned is not None:
            self.body.owned.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def describe(source: object, *, offset: int | None = None, count: int | None = None) -> Source:
    """The ``Source`` for ``source``: its kind, its fd, where a file starts, how many bytes a
    transfer of ``count`` (or to the end) will move. ``TypeError`` for what cannot be sent;
    ``ValueError`` for a ``count`` more than a regular file holds from where it starts, so that
    a server refuses it before it promises that length in a head. A path is opened here:
    ``close()`` the source (or use it as a context manager) if it is not sent."""
    if isinstance(source, Source):
        return source
    if count is not None and count < 0:
        raise ValueError(f"count must be None or >= 0, not {count}")
    if offset is not None and offset < 0:
        raise ValueError(f"offset must be None or >= 0, not {offset}")
    described = Source(classify(source, offset, allow_async=True), count)
    body = described.body
    if isinstance(body, FileBody) and count is not None and count > body.length:
        described.close()
        raise ValueError(
            f"count {count} is more than the {body.length} bytes the file holds from offset {body.offset}"
        )
    return described
