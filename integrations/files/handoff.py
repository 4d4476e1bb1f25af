"""``X-Sendfile`` and ``X-Accel-Redirect``: an app names a file, the server sends it.

Apps written for Apache's mod_xsendfile or nginx's ``internal`` locations (Flask's
``USE_X_SENDFILE``, django-sendfile2, Rails' ``send_file``) answer a protected download with
an empty body and a header naming the file. fastbody's servers honour them only when told
where such files may live:

- ``FASTBODY_XSENDFILE_ROOTS="/srv/private:/srv/media"``: ``X-Sendfile: /srv/private/a.pdf``
  (an absolute path) is served when it lies inside one of these directories;
- ``FASTBODY_ACCEL_REDIRECT="/protected/=/srv/private/,/media/=/srv/media/"``:
  ``X-Accel-Redirect: /protected/a.pdf`` (a URI path, percent-encoded, as nginx takes it)
  serves ``/srv/private/a.pdf``.

A name that leads outside its directory (``..``, encoded or not, or a symlink leading out),
a missing file or one that is not a regular file is refused (``Refused``): the server answers
404 and logs one warning, never the file. With neither variable set, the headers pass through
untouched.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import BinaryIO, TypeVar
from urllib.parse import unquote, unquote_to_bytes

from . import representation
from .answer import FileAnswer, FileRange, answer

T = TypeVar("T", str, bytes)

XSENDFILE_ROOTS = "FASTBODY_XSENDFILE_ROOTS"
ACCEL_REDIRECT = "FASTBODY_ACCEL_REDIRECT"

X_SENDFILE = "x-sendfile"
X_ACCEL_REDIRECT = "x-accel-redirect"
HANDOFF_HEADERS = frozenset({X_SENDFILE, X_ACCEL_REDIRECT})

REPLACED = frozenset(
    {"content-length", "transfer-encoding", "content-range", "accept-ranges", "etag", "last-modified"}
)
"""The app's headers that described its own (empty) body: the file's answer replaces them
(ETag and Last-Modified too, as nginx replaces them)."""


NOT_FOUND = b"Not Found\n"
"""The body of the 404 a refused handoff gets (the reason goes to the log, never to the client)."""

REFUSED_LOG = "fastbody: %s (%s %s): answered 404"
"""The warning for a refused handoff: the reason, the request's method and path."""


class Refused(Exception):
    """The header names no file the server may send; the message says why (for the log)."""


@dataclass(frozen=True)
class Target:
    """The file a handoff header named, opened by nobody yet: its real path and its stat, the
    name the app gave (its media type is guessed from that, as nginx guesses from the URI),
    and the directories it must stay inside once opened."""

    path: str
    stat: os.stat_result
    name: str = ""
    directories: tuple[str, ...] = ()


@dataclass(frozen=True)
class Handoff:
    """Where handed-off files may live. ``sendfile_roots``: directories for ``X-Sendfile``;
    ``locations``: ``(URI prefix, directory)`` pairs for ``X-Accel-Redirect``, longest first.
    Directories are kept as their real paths."""

    sendfile_roots: tuple[str, ...] = ()
    locations: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Handoff | None:
        """The settings of ``FASTBODY_XSENDFILE_ROOTS`` / ``FASTBODY_ACCEL_REDIRECT``; None
        when neither is set. A malformed value is a ``ValueError`` (at startup, not per request)."""
        roots = tuple(_directory(XSENDFILE_ROOTS, root) for root in _items(environ.get(XSENDFILE_ROOTS), ":"))
        locations = []
        for pair in _items(environ.get(ACCEL_REDIRECT), ","):
            prefix, equals, directory = pair.partition("=")
            if not equals or not prefix.startswith("/"):
                raise ValueError(f"{ACCEL_REDIRECT}: {pair!r} is not a '/prefix/=/directory/' pair")
            locations.append((prefix, _directory(ACCEL_REDIRECT, directory)))
        if not roots and not locations:
            return None
        locations.sort(key=lambda location: len(location[0]), reverse=True)
        return cls(roots, tuple(locations))

    def named(self, headers: Iterable[tuple[str, str]]) -> tuple[str, str] | None:
        """The handoff header among ``headers`` (lower-case name, value) this server honours."""
        for name, value in headers:
            lower = name.lower()
            if (lower == X_SENDFILE and self.sendfile_roots) or (
                lower == X_ACCEL_REDIRECT and self.locations
            ):
                return lower, value
        return None

    def target(self, name: str, value: str) -> Target:
        """The file ``name: value`` hands over; ``Refused`` when there is none to send. A value
        is latin-1 text of the header's bytes (WSGI and ASGI both): those bytes are the file
        system's name (X-Sendfile) or a percent-encoded UTF-8 URI path (X-Accel-Redirect)."""
        if name == X_SENDFILE:
            path = _file_system_name(value)
            if not os.path.isabs(path):
                raise Refused(f"X-Sendfile {value!r} is not an absolute path")
            return _inside(path, path, self.sendfile_roots, f"X-Sendfile {value!r}")
        try:
            path = _uri_path(value)
        except UnicodeDecodeError:
            raise Refused(f"X-Accel-Redirect {value!r} is not UTF-8 once percent-decoded") from None
        for prefix, directory in self.locations:
            # A prefix without its trailing slash is a directory too: /p takes /p/x, not /px.
            if path.startswith(prefix if prefix.endswith("/") else prefix + "/") or path in (
                prefix,
                prefix.rstrip("/"),
            ):
                rest = path[len(prefix) :].lstrip("/")
                return _inside(
                    os.path.join(directory, rest), path, (directory,), f"X-Accel-Redirect {value!r}"
                )
        raise Refused(f"X-Accel-Redirect {value!r} is under no {ACCEL_REDIRECT} prefix")


def without_handoff(headers: Iterable[tuple[T, T]]) -> list[tuple[T, T]]:
    """``headers`` (str or bytes pairs) without any handoff header: they never reach a client."""
    return [(name, value) for name, value in headers if _lower(name) not in HANDOFF_HEADERS]


def _lower(name: str | bytes) -> str:
    return (name if isinstance(name, str) else bytes(name).decode("latin-1")).lower()


def _file_system_name(value: str) -> str:
    try:
        return os.fsdecode(value.encode("latin-1"))  # the header's bytes, as the file system names
    except UnicodeEncodeError:  # a WSGI app that put a str beyond latin-1 in it: the name itself
        return value


def _uri_path(value: str) -> str:
    path = value.partition("?")[0].partition("#")[0]
    try:
        raw = path.encode("latin-1")
    except UnicodeEncodeError:
        return unquote(path, errors="strict")
    return unquote_to_bytes(raw).decode("utf-8")


@dataclass(frozen=True)
class HandedOff:
    """A handoff resolved: the answer to send (its headers final: the app's own first) and the
    file opened for its parts (None when there are none: HEAD, 304, 412, 416, an empty file)."""

    answer: FileAnswer
    file: BinaryIO | None


def hand_off(
    handoff: Handoff,
    named: tuple[str, str],
    method: str,
    request: Mapping[str, str],
    status: int,
    headers: Iterable[tuple[str, str]],
) -> HandedOff:
    """The answer to a response with ``status`` and ``headers`` (the app's, any case) whose
    handoff header ``named`` names a file, and that file opened; ``Refused`` when there is none
    to send. Blocks (realpath, stat, open): an event loop calls it in a thread. The app's 200
    or 206 (werkzeug's range of its empty body) is answered as a 200 would be; another status
    sends the whole file with it."""
    target = handoff.target(*named)
    kept = [
        (name.lower(), value) for name, value in headers if name.lower() not in REPLACED | HANDOFF_HEADERS
    ]
    if not any(name == "content-type" for name, _ in kept):
        kept.insert(0, ("content-type", representation.media_type(target.name or target.path)))
    file = open_target(target)
    try:
        opened = os.fstat(file.fileno())  # the validators of what will be sent
        etag, last_modified = representation.validators(opened.st_size, opened.st_mtime)
        kept += [("etag", etag), ("last-modified", last_modified)]
        whole = 200 if status in (200, 206) else status
        found = answer(method, request, kept, opened.st_size, status=whole)
    except BaseException:
        file.close()
        raise
    if not any(isinstance(part, FileRange) for part in found.parts):
        file.close()  # HEAD, 304, 412, 416, an empty file: the head says it all
        return HandedOff(found, None)
    return HandedOff(found, file)


def open_target(target: Target) -> BinaryIO:
    """The target opened, and refused unless what was opened is a regular file inside its
    directories: a name swapped for a symlink after ``target`` checked it (the last part:
    O_NOFOLLOW; a directory on the way: the opened file's own path) is not sent."""
    try:
        fd = os.open(target.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        raise Refused(f"{target.path}: {error.strerror}") from None
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}")  # where the opened file really is
        if target.directories and not _within(opened, target.directories):
            raise Refused(f"{target.path} was replaced by a way outside the configured directories")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Refused(f"{target.path} is not a regular file")
        return open(fd, "rb", closefd=True)  # the caller's HandedOff owns it
    except BaseException:
        os.close(fd)
        raise


def _inside(path: str, name: str, directories: tuple[str, ...], what: str) -> Target:
    if "\0" in path:
        raise Refused(f"{what} holds a NUL byte")
    try:
        real = os.path.realpath(path)  # symlinks and '..' resolved: the file that would be opened
    except OSError as error:  # (a symlink loop, or one changing under us)
        raise Refused(f"{what}: {error.strerror}") from None
    if not _within(real, directories):
        raise Refused(f"{what} leads outside the configured directories")
    try:
        found = os.stat(real)
    except OSError as error:
        raise Refused(f"{what}: {error.strerror}") from None
    if not stat.S_ISREG(found.st_mode):
        raise Refused(f"{what} is not a regular file")
    return Target(real, found, name, directories)


def _within(path: str, directories: tuple[str, ...]) -> bool:
    return any(os.path.commonpath([path, directory]) == directory for directory in directories)


def _items(value: str | None, separator: str) -> list[str]:
    return [item.strip() for item in (value or "").split(separator) if item.strip()]


def _directory(variable: str, directory: str) -> str:
    if not os.path.isabs(directory):
        raise ValueError(f"{variable}: {directory!r} is not an absolute directory")
    return os.path.realpath(directory)
