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
from typing import BinaryIO
from urllib.parse import unquote

from . import representation
from .answer import FileAnswer, FileRange, answer

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

REPRESENTATION = frozenset(
    {
        "content-type",
        "content-disposition",
        "content-encoding",
        "content-language",
        "content-location",
        "cache-control",
        "expires",
        "vary",
    }
)
"""The app's headers that describe the file: ``answer`` decides which of them a 304 keeps. The
rest (Set-Cookie, X-Frame-Options, ...) are the app's own and go out whatever the status."""


class Refused(Exception):
    """The header names no file the server may send; the message says why (for the log)."""


@dataclass(frozen=True)
class Target:
    """The file a handoff header named, opened by nobody yet: its real path and its stat."""

    path: str
    stat: os.stat_result


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
        """The file ``name: value`` hands over; ``Refused`` when there is none to send."""
        if name == X_SENDFILE:
            if not os.path.isabs(value):
                raise Refused(f"X-Sendfile {value!r} is not an absolute path")
            return _inside(value, self.sendfile_roots, f"X-Sendfile {value!r}")
        try:
            path = unquote(value.partition("?")[0].partition("#")[0], errors="strict")
        except UnicodeDecodeError:
            raise Refused(f"X-Accel-Redirect {value!r} is not UTF-8 once percent-decoded") from None
        for prefix, directory in self.locations:
            # A prefix without its trailing slash is a directory too: /p takes /p/x, not /px.
            if path.startswith(prefix if prefix.endswith("/") else prefix + "/") or path in (
                prefix,
                prefix.rstrip("/"),
            ):
                rest = path[len(prefix) :].lstrip("/")
                return _inside(os.path.join(directory, rest), (directory,), f"X-Accel-Redirect {value!r}")
        raise Refused(f"X-Accel-Redirect {value!r} is under no {ACCEL_REDIRECT} prefix")


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
    own, described = [], []
    for name, value in headers:
        lower = name.lower()
        if lower in REPRESENTATION:
            described.append((lower, value))
        elif lower not in REPLACED and lower not in HANDOFF_HEADERS:
            own.append((name, value))
    if not any(name == "content-type" for name, _ in described):
        described.insert(0, ("content-type", representation.media_type(target.path)))
    file = _open(target)
    try:
        found = os.fstat(file.fileno())  # the validators of what will be sent
        etag, last_modified = representation.validators(found.st_size, found.st_mtime)
        described += [("etag", etag), ("last-modified", last_modified)]
        whole = 200 if status in (200, 206) else status
        found_answer = answer(method, request, described, found.st_size, status=whole)
        found_answer = FileAnswer(found_answer.status, [*own, *found_answer.headers], found_answer.parts)
    except BaseException:
        file.close()
        raise
    if not any(isinstance(part, FileRange) for part in found_answer.parts):
        file.close()  # HEAD, 304, 412, 416, an empty file: the head says it all
        return HandedOff(found_answer, None)
    return HandedOff(found_answer, file)


def _open(target: Target) -> BinaryIO:
    """The target, opened once; refused when what was opened is not the file that was checked
    (replaced in between, so it may lie outside the directories)."""
    try:
        file = open(target.path, "rb")  # noqa: SIM115 - the caller's HandedOff owns it
    except OSError as error:
        raise Refused(f"{target.path}: {error.strerror}") from None
    opened = os.fstat(file.fileno())
    if (opened.st_dev, opened.st_ino) != (target.stat.st_dev, target.stat.st_ino):
        file.close()
        raise Refused(f"{target.path} was replaced while it was opened")
    return file


def _inside(path: str, directories: tuple[str, ...], what: str) -> Target:
    if "\0" in path:
        raise Refused(f"{what} holds a NUL byte")
    real = os.path.realpath(path)  # symlinks and '..' resolved: the file that would be opened
    if not any(os.path.commonpath([real, directory]) == directory for directory in directories):
        raise Refused(f"{what} leads outside the configured directories")
    try:
        found = os.stat(real)
    except OSError as error:
        raise Refused(f"{what}: {error.strerror}") from None
    if not stat.S_ISREG(found.st_mode):
        raise Refused(f"{what} is not a regular file")
    return Target(real, found)


def _items(value: str | None, separator: str) -> list[str]:
    return [item.strip() for item in (value or "").split(separator) if item.strip()]


def _directory(variable: str, directory: str) -> str:
    if not os.path.isabs(directory):
        raise ValueError(f"{variable}: {directory!r} is not an absolute directory")
    return os.path.realpath(directory)
