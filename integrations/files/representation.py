"""What a file is sent as, pure: its media type, the precompressed sibling the client accepts,
its caching and its validators.

Precompressed siblings are whitenoise's and nginx ``gzip_static``/``brotli_static``'s: for
``app.css``, a ``app.css.br`` or ``app.css.gz`` beside it holds the same content encoded, and
is sent instead (``Content-Encoding``, the original's Content-Type, ``Vary: Accept-Encoding``)
when ``Accept-Encoding`` allows it; brotli first.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from email.utils import formatdate
from mimetypes import guess_type

ENCODINGS: tuple[tuple[str, str], ...] = (("br", ".br"), ("gzip", ".gz"))
"""Content codings a sibling may carry, in order of preference, and its file suffix."""

IMMUTABLE = "public, max-age=31536000, immutable"
"""Cache-Control for a name that carries a hash of its content: it never changes under that name."""

_HASHED = re.compile(r"\.(?=[0-9]*[a-fA-F])[0-9a-fA-F]{8,}\.[^./]+$")
"""``name.<8 or more hex digits>.ext`` (webpack ``[contenthash]``, Django's manifest storage),
with a letter among the digits: ``report.20240101.pdf`` is a date, not a hash."""

_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")
"""RFC 9110 12.4.2: a weight is 0 to 1 with at most three decimals."""

_ENCODED_TYPES = {
    "gzip": "application/gzip",
    "br": "application/x-brotli",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "compress": "application/x-compress",
}
"""The type of a file that is itself compressed (``x.css.gz`` asked for by name), by the coding
``mimetypes`` reads from its suffix: never ``text/css``, for no Content-Encoding is sent."""


def media_type(name: str) -> str:
    """The Content-Type for a file called ``name``; ``text/*`` types say ``charset=utf-8``, as
    Starlette's FileResponse does."""
    guessed, encoding = guess_type(name, strict=False)
    if encoding is not None:
        return _ENCODED_TYPES.get(encoding, "application/octet-stream")
    if guessed is None:
        return "application/octet-stream"
    return f"{guessed}; charset=utf-8" if guessed.startswith("text/") else guessed


def cache_control(name: str, max_age: int | None) -> str | None:
    """``public, max-age=N``, or ``IMMUTABLE`` for a hashed name; None (no header at all, hashed
    names included) when ``max_age`` is None: the app's caching is its own."""
    if max_age is None:
        return None
    stem = name[: -len(suffix)] if (suffix := _encoding_suffix(name)) else name
    if _HASHED.search(os.path.basename(stem)):
        return IMMUTABLE
    return f"public, max-age={max_age}"


def accepted_encodings(accept_encoding: str | None, offered: Iterable[str]) -> list[str]:
    """Of the ``offered`` codings (in preference order), those ``Accept-Encoding`` allows
    (RFC 9110 12.5.3: listed, or covered by ``*``, with a q-value above 0), best q first."""
    if not accept_encoding:
        return []
    weights: dict[str, float] = {}
    for element in accept_encoding.split(","):
        coding, *params = (part.strip() for part in element.split(";"))
        if not coding:
            continue
        weight = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                value = value.strip()
                weight = float(value) if _QVALUE.fullmatch(value) else 0.0  # not a weight: not acceptable
        weights[coding.lower()] = weight
    chosen: list[tuple[float, int, str]] = []
    for rank, coding in enumerate(offered):
        listed = weights.get(coding, weights.get("x-gzip") if coding == "gzip" else None)
        weight = weights.get("*", 0.0) if listed is None else listed
        if weight > 0:  # (q=0: "not acceptable")
            chosen.append((-weight, rank, coding))
    return [coding for _, _, coding in sorted(chosen)]


def sibling_names(name: str) -> list[tuple[str, str]]:
    """``(coding, sibling file name)`` for each coding a precompressed sibling of ``name`` may
    carry; none for a name that is itself compressed."""
    if _encoding_suffix(name):
        return []
    return [(coding, name + suffix) for coding, suffix in ENCODINGS]


def validators(size: int, mtime: float) -> tuple[str, str]:
    """ETag and Last-Modified for a file of ``size`` bytes modified at ``mtime``: Starlette's
    FileResponse's, so a client's validators stay good across fastbody and Starlette."""
    etag = hashlib.md5(f"{mtime}-{size}".encode(), usedforsecurity=False).hexdigest()
    return f'"{etag}"', formatdate(mtime, usegmt=True)


def _encoding_suffix(name: str) -> str:
    lower = name.lower()  # as mimetypes reads suffixes: app.css.GZ is compressed too
    return next((name[-len(suffix) :] for _, suffix in ENCODINGS if lower.endswith(suffix)), "")
