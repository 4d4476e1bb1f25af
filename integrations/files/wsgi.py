"""Files over WSGI: ``X-Sendfile`` / ``X-Accel-Redirect`` answered by the server, and the
range bodies of werkzeug and whitenoise seen for what they are (a file, an offset, a count).

- ``HandoffMiddleware``: an app's response naming a file in a handoff header becomes that file,
  answered by ``answer`` (ranges, conditionals, HEAD) as a ``FileParts`` body;
- ``FileParts``: an open file and the parts of it to send (``answer``'s parts); a server that
  knows it sends each part by sendfile, any other reads it as a file;
- ``werkzeug_range`` / ``sliced_file``: werkzeug's ``_RangeWrapper`` (Flask's ``send_file``
  answering a Range) and whitenoise's ``SlicedFile`` (its range responses) as ``FileParts``.

Nothing here moves a byte: fastbody's gunicorn workers send ``FileParts`` through the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import IO, Any

import fastbody

from .answer import FileRange, Part
from .handoff import NOT_FOUND, REFUSED_LOG, Handoff, Refused, hand_off, without_handoff

__all__ = ["FileParts", "HandoffMiddleware", "request_headers", "sliced_file", "werkzeug_range"]

Environ = dict[str, Any]
Headers = list[tuple[str, str]]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


@dataclass
class FileParts:
    """The body of a file answer: ``file`` (open, regular) and the ``parts`` to send of it —
    literal bytes and ``FileRange``s at explicit offsets, whatever the file's position.
    ``on_close`` releases what the body came from (the file, or the app's iterable holding it).

    Read as a file (by a server's own ``wsgi.file_wrapper``), it yields the same bytes."""

    file: IO[bytes]
    parts: list[Part]
    on_close: Callable[[], object] | None = None
    _next: int = field(default=0, init=False, repr=False)  # read(): the part under way
    _done: int = field(default=0, init=False, repr=False)  # read(): bytes of that part already read

    @property
    def length(self) -> int:
        return sum(part.count if isinstance(part, FileRange) else len(part) for part in self.parts)

    def read(self, size: int = -1) -> bytes:
        while self._next < len(self.parts):
            part = self.parts[self._next]
            left = (part.count if isinstance(part, FileRange) else len(part)) - self._done
            if left <= 0:
                self._next, self._done = self._next + 1, 0
                continue
            want = left if size < 0 else min(size, left)
            if isinstance(part, bytes):
                data = part[self._done : self._done + want]
            else:
                self.file.seek(part.offset + self._done)
                data = fastbody.read_some(self.file, want)
                if not data:
                    raise fastbody.IncompleteTransfer.make(None, f"the file ended {left} bytes short", 0)
            self._done += len(data)
            return data
        return b""

    def close(self) -> None:
        (self.on_close or self.file.close)()


# X-Sendfile / X-Accel-Redirect


class HandoffMiddleware:
    """Answers a response that names a file in a handoff header (``Handoff.named``) with that
    file, the way nginx answers ``X-Accel-Redirect``: the app's Content-Type and
    Content-Disposition kept (else the file's media type), its validators replaced by the
    file's, the request's Range and conditionals evaluated for an app's 200 or 206; 1xx, 204
    and 304 pass with the header removed; any other status sends the whole file with it.
    A name that is refused is a 404 and one warning on ``log``; the header never goes out.

    The decision needs the whole head before the body, so the app's ``start_response`` is held
    until the app returns (or writes). An app that starts its response only while its body is
    iterated, or writes it with ``write()``, is passed through with a warning if it names a
    file: its body as it is, the handoff header dropped."""

    def __init__(self, app: WSGIApp, handoff: Handoff, log: logging.Logger) -> None:
        self.app = app
        self.handoff = handoff
        self.log = log

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        held = HeldStart(start_response, self.handoff, self.log)
        body = self.app(environ, held)
        if held.passed or held.status is None:
            held.pass_through()  # started lazily (or never): whatever comes, goes as it is
            return body
        named = self.handoff.named(held.headers)
        code = _code(held.status)
        if named is None or not fastbody.framing.body_allowed("GET", code):
            held.start(held.headers if named is None else without_handoff(held.headers))  # 1xx, 204, 304
            return body
        _close(body)  # its (empty) body is replaced by the file
        return self._file(environ, held, code, named)

    def _file(self, environ: Environ, held: HeldStart, code: int, named: tuple[str, str]) -> Iterable[bytes]:
        assert held.status is not None
        method = str(environ.get("REQUEST_METHOD", "GET"))
        try:
            handed = hand_off(self.handoff, named, method, request_headers(environ), code, held.headers)
        except Refused as refused:
            self.log.warning(REFUSED_LOG, refused, method, environ.get("PATH_INFO"))
            held.start_response(
                "404 Not Found",
                [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(NOT_FOUND)))],
            )
            return [NOT_FOUND]
        found = handed.answer
        status = held.status if found.status == code else _status_line(found.status)
        try:
            held.start_response(status, found.headers, held.exc_info)
        except BaseException:
            if handed.file is not None:
                handed.file.close()
            raise
        if handed.file is None:
            return []
        wrapper = environ["wsgi.file_wrapper"]
        return wrapper(FileParts(handed.file, found.parts))  # type: ignore[no-any-return]


class HeldStart:
    """The app's ``start_response``, held: status, headers and exc_info kept until the
    middleware decides; from ``pass_through`` on, calls go straight to the server's."""

    def __init__(self, start_response: StartResponse, handoff: Handoff, log: logging.Logger) -> None:
        self.start_response = start_response
        self.handoff = handoff
        self.log = log
        self.status: str | None = None
        self.headers: Headers = []
        self.exc_info: Any = None
        self.passed = False  # the server's start_response has been called (or is called directly)
        self._write: Callable[[bytes], object] | None = None

    def __call__(self, status: str, headers: Headers, exc_info: Any = None) -> Callable[[bytes], object]:
        if self.passed:
            named = self.handoff.named(headers)
            if named is not None:
                self.log.warning(
                    "fastbody: the app started its response while its body was iterated: "
                    "its %s header is dropped, not honoured",
                    named[0],
                )
                headers = without_handoff(headers)
            return self.start_response(status, headers, exc_info)  # type: ignore[no-any-return]
        # Not started yet: a second call (with exc_info, PEP 3333) replaces the first.
        self.status, self.headers, self.exc_info = status, list(headers), exc_info
        return self.write

    def write(self, data: bytes) -> object:
        """The app writes its body itself: its head goes out as it is, then the bytes."""
        if self._write is None:
            if self.handoff.named(self.headers) is not None:
                self.log.warning("fastbody: the app wrote its body with write(): handoff header dropped")
            self.start(without_handoff(self.headers))
        assert self._write is not None
        return self._write(data)

    def start(self, headers: Headers) -> None:
        """The app's status with ``headers``, given to the server's ``start_response``."""
        self._write = self.start_response(self.status, headers, self.exc_info)
        self.passed = True

    def pass_through(self) -> None:
        self.passed = True


def request_headers(environ: Mapping[str, Any]) -> dict[str, str]:
    """The request's headers by lower-case name, as ``answer`` takes them."""
    return {
        key[5:].replace("_", "-").lower(): value for key, value in environ.items() if key.startswith("HTTP_")
    }


def _code(status: str) -> int:
    code = status.partition(" ")[0]
    return int(code) if code.isdigit() else 0


def _status_line(code: int) -> str:
    return f"{code} {HTTPStatus(code).phrase}"


def _close(body: object) -> None:
    close = getattr(body, "close", None)
    if close is not None:
        close()


# Range bodies of werkzeug and whitenoise


def werkzeug_range(body: object, file_wrapper: type) -> FileParts | None:
    """werkzeug's ``_RangeWrapper`` (``send_file(conditional=True)`` answering a Range, its 206
    head already given) around ``file_wrapper`` of a regular file, not iterated yet, as the
    range it would read: ``start_byte`` from where the file is (or from 0 when werkzeug seeks),
    ``byte_range`` bytes (or to the end). None for anything else."""
    inner = getattr(body, "iterable", None)
    start = getattr(body, "start_byte", None)
    count = getattr(body, "byte_range", None)
    untouched = getattr(body, "read_length", None) == 0 and getattr(body, "end_reached", None) is False
    if not untouched or not isinstance(inner, file_wrapper) or not isinstance(start, int):
        return None
    if getattr(inner, "length", None) is not None or not (count is None or isinstance(count, int)):
        return None  # a wrapper with a length cap of its own: read through it as before
    file: Any = getattr(inner, "filelike", None)
    whole = _regular_file(file)
    if whole is None or whole.offset is None:
        return None
    offset = start if getattr(body, "seekable", False) else whole.offset + start
    part = _regular_file(file, offset=offset, count=count)
    if part is None or part.length is None:
        return None
    return FileParts(file, [FileRange(offset, part.length)], on_close=getattr(body, "close", None))


def sliced_file(source: object) -> FileParts | None:
    """whitenoise's ``SlicedFile`` (its range responses): ``remaining`` bytes of ``fileobj``, a
    regular file already at the range's start, as that range. None for anything else."""
    file: Any = getattr(source, "fileobj", None)
    remaining = getattr(source, "remaining", None)
    if not isinstance(remaining, int) or not hasattr(source, "read"):
        return None
    part = _regular_file(file, count=remaining)
    if part is None or part.offset is None:
        return None
    return FileParts(file, [FileRange(part.offset, remaining)], on_close=getattr(source, "close", None))


def _regular_file(
    file: Any, *, offset: int | None = None, count: int | None = None
) -> fastbody.Source | None:
    """The description of ``count`` bytes of ``file`` from ``offset``, when it is a regular file
    that holds them."""
    if file is None:
        return None
    try:
        described = fastbody.describe(file, offset=offset, count=count)
    except (TypeError, ValueError):  # not sendable, closed, shorter than count, or no file at all
        return None
    return described if described.kind == "file" else None
