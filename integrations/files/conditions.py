"""Conditional requests (RFC 9110 13), pure: the request's ``If-*`` headers against the
representation's ETag and Last-Modified.

``precondition`` evaluates them in the order 13.2.2 gives: If-Match, else If-Unmodified-Since
(412 when false); If-None-Match, else If-Modified-Since for GET/HEAD (304 for GET/HEAD, 412
otherwise). A date that does not parse is ignored, as 13.1.3/13.1.4 say.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timezone
from email.utils import parsedate_to_datetime

NOT_MODIFIED = 304
PRECONDITION_FAILED = 412


def precondition(
    method: str, request: Mapping[str, str], etag: str | None, last_modified: str | None
) -> int | None:
    """304, 412, or None (the conditions hold: answer as if there were none). ``request``: the
    request's headers by lower-case name."""
    safe = method in ("GET", "HEAD")
    if (if_match := request.get("if-match")) is not None:
        if not _matches(if_match, etag, weak=False):
            return PRECONDITION_FAILED
    elif (if_unmodified := request.get("if-unmodified-since")) is not None and _later(
        last_modified, if_unmodified
    ):
        return PRECONDITION_FAILED
    if (if_none_match := request.get("if-none-match")) is not None:
        if _matches(if_none_match, etag, weak=True):
            return NOT_MODIFIED if safe else PRECONDITION_FAILED
    elif safe and (if_modified := request.get("if-modified-since")) is not None:
        date = _date(if_modified)
        modified = _date(last_modified) if last_modified is not None else None
        if date is not None and modified is not None and modified <= date:
            return NOT_MODIFIED
    return None


def range_applies(if_range: str | None, etag: str | None, last_modified: str | None) -> bool:
    """Whether a Range request may be answered with ranges: no If-Range, or one naming the
    current representation by a strong ETag or its exact Last-Modified date (13.1.5)."""
    if if_range is None:
        return True
    if_range = if_range.strip()
    if if_range.startswith('"'):
        return etag is not None and not etag.startswith("W/") and if_range == etag
    if if_range.startswith("W/"):
        return False
    return last_modified is not None and _date(if_range) is not None and if_range == last_modified


def entity_tags(header: str) -> list[str]:
    """The entity-tags of an If-Match / If-None-Match list (quoted strings may hold commas)."""
    tags: list[str] = []
    rest = header.strip()
    while rest:
        weak = rest.startswith("W/")
        body = rest[2:] if weak else rest
        if body.startswith('"'):
            close = body.find('"', 1)
            if close < 0:
                return tags  # an unterminated tag ends the list
            tags.append(("W/" if weak else "") + body[: close + 1])
            rest = body[close + 1 :]
        else:
            token, _, rest = body.partition(",")
            if token.strip():
                tags.append(token.strip())
            continue
        rest = rest.lstrip(" \t")
        if rest.startswith(","):
            rest = rest[1:]
        rest = rest.lstrip(" \t,")
    return tags


def _matches(header: str, etag: str | None, *, weak: bool) -> bool:
    if header.strip() == "*":
        return True  # the representation exists
    if etag is None:
        return False
    if weak:
        return any(_opaque(tag) == _opaque(etag) for tag in entity_tags(header))
    return not etag.startswith("W/") and etag in entity_tags(header)


def _opaque(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def _later(last_modified: str | None, header: str) -> bool:
    date = _date(header)
    modified = _date(last_modified) if last_modified is not None else None
    return date is not None and modified is not None and modified > date


_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = r"\d\d:\d\d:\d\d"
_HTTP_DATE = re.compile(
    rf"{_DAY}, \d\d {_MONTH} \d{{4}} {_TIME} GMT"  # IMF-fixdate
    rf"|(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), \d\d-{_MONTH}-\d\d {_TIME} GMT"
    rf"|{_DAY} {_MONTH} [ \d]\d {_TIME} \d{{4}}",  # asctime-date
    re.ASCII,
)
"""HTTP-date (RFC 9110 5.6.7): IMF-fixdate, or the obsolete rfc850-date and asctime-date."""


def _date(text: str) -> float | None:
    """The instant an HTTP-date names; None for anything else (a list of dates included, as
    13.1.3/13.1.4 say). All three formats are GMT, asctime's too: never the local time."""
    text = text.strip()
    if not _HTTP_DATE.fullmatch(text):
        return None
    try:
        return parsedate_to_datetime(text).replace(tzinfo=timezone.utc).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
