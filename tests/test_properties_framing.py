"""Properties of ``fastbody.framing``'s server-side decision against what h11 does as a server.

For a request (method, HTTP/1.0 or 1.1) and a response (status, the app's headers, a body length
the server may know), ``framing.declared`` + ``framing.for_response`` decide how the body goes:
Content-Length, chunked, the connection's end, or no body; ``Framing.header()`` is the field the
head gains. h11's verdict is ``h11.Connection(h11.SERVER)`` after receiving that request and
sending that response: the framing fields it writes (it adds ``Transfer-Encoding: chunked`` for a
body of unknown length to HTTP/1.1, drops framing fields and closes for HTTP/1.0, forbids a
body for HEAD/1xx/204/304) and the body writer it then uses.

Properties:

1. What h11 refuses to send (a Transfer-Encoding other than chunked, a Content-Length that is
   not a number, a list of different ones), ``framing.declared`` refuses too.
2. The app's own head (no length known to the server): h11 frames the body as fastbody does,
   and the head h11 writes is the app's plus exactly ``Framing.header()`` — except where the
   docstring of ``for_response`` says otherwise (named at each place below).
3. The head fastbody decides (the app's fields plus ``Framing.header()``, a known length
   included) needs no framing fix from h11, which then frames the body the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import h11
from hypothesis import event, given, settings
from hypothesis import strategies as st

from fastbody import framing
from fastbody.framing import Delimit, Framing, FramingError

PROPERTY = settings(max_examples=800, deadline=None, database=None)

Fields = list[tuple[bytes, bytes]]
FRAMING_FIELDS = (b"content-length", b"transfer-encoding")
WRITERS: dict[str, tuple[str, int | None]] = {
    "ChunkedWriter": ("chunked", None),
    "Http10Writer": ("close", None),
}


@dataclass(frozen=True)
class Case:
    http11: bool
    method: str | bytes
    status: int
    headers: Fields  # as the app gives them (values may carry OWS, which a recipient strips)
    known: int | None


@dataclass(frozen=True)
class Sent:
    """What h11 did with a response: the framing fields it wrote, and how it frames the body
    (("length", N): N bytes, 0 when the body is forbidden; ("chunked", None); ("close", None))."""

    fields: list[tuple[bytes, bytes]]
    body: tuple[str, int | None]


def h11_server(case: Case) -> h11.Connection:
    conn = h11.Connection(h11.SERVER)
    method = case.method if isinstance(case.method, str) else case.method.decode()
    version = "1.1" if case.http11 else "1.0"
    conn.receive_data(f"{method} / HTTP/{version}\r\nHost: x\r\n\r\n".encode())
    assert isinstance(conn.next_event(), h11.Request)
    return conn


def h11_sends(case: Case, headers: Fields) -> Sent | h11.LocalProtocolError:
    """h11 as the server: the request received, this response sent (without surrounding OWS in
    field values: OWS is not part of a value, RFC 9110 5.5, and h11 refuses it as a sender)."""
    conn = h11_server(case)
    clean = [(name, value.strip(b" \t")) for name, value in headers]
    try:
        if case.status < 200:
            out = conn.send(h11.InformationalResponse(status_code=case.status, headers=clean))
            body: tuple[str, int | None] = ("length", 0)
        else:
            out = conn.send(h11.Response(status_code=case.status, headers=clean))
            writer: Any = conn._writer
            kind = type(writer).__name__
            body = ("length", writer._length) if kind == "ContentLengthWriter" else WRITERS[kind]
    except h11.LocalProtocolError as error:
        return error
    assert out is not None
    lines = out.split(b"\r\n")[1:-2]
    written = [
        (name.lower(), value.strip().lower()) for name, _, value in (line.partition(b":") for line in lines)
    ]
    return Sent([field for field in written if field[0] in FRAMING_FIELDS], body)


def h11_forbids_body(case: Case) -> bool:
    """Whether h11 sends no body for this method and status whatever the head says (probed: even
    a chunked head gets a zero-length writer)."""
    found = h11_sends(case, [(b"transfer-encoding", b"chunked")])
    assert isinstance(found, Sent)
    return found.body == ("length", 0)


def as_h11(decided: Framing) -> tuple[str, int | None]:
    if decided.delimit is Delimit.NONE:
        return ("length", 0)
    if decided.delimit is Delimit.LENGTH:
        return ("length", decided.length)
    return ("chunked", None) if decided.delimit is Delimit.CHUNKED else ("close", None)


def framing_fields(headers: Fields) -> list[tuple[bytes, bytes]]:
    return [(n.lower(), v.strip(b" \t").lower()) for n, v in headers if n.lower() in FRAMING_FIELDS]


# ---- the cases ---------------------------------------------------------------------------------

OWS = st.sampled_from([b""] * 6 + [b" ", b"\t"])
LENGTH_VALUES = st.one_of(st.integers(0, 10**6).map(lambda n: b"%d" % n), st.sampled_from([b"0", b"007"]))
BAD_LENGTH_VALUES = st.sampled_from(
    [b"+5", b"-1", b"abc", b"5, 5", b"5,6", b"1" * 19, b"1" * 30, b"0x10", b"5 5", b"", b"5."]
)
CODING_VALUES = st.sampled_from([b"chunked", b"Chunked", b"CHUNKED"])
BAD_CODING_VALUES = st.sampled_from(
    [b"gzip", b"gzip, chunked", b"chunked, chunked", b"identity", b"chunked;a=b"]
)


@st.composite
def app_headers(draw: st.DrawFn) -> Fields:
    """The app's fields: framing ones by a plan (none, one, both, one twice), good or bad values,
    among others that do not bear on framing."""
    fields: Fields = draw(
        st.lists(
            st.sampled_from([(b"x-a", b"b"), (b"connection", b"keep-alive"), (b"server", b"s")]), max_size=2
        )
    )
    for kind in draw(st.sampled_from(["", "", "l", "l", "t", "t", "lt", "ll", "tt"])):
        if kind == "l":
            name = draw(st.sampled_from([b"content-length", b"Content-Length"]))
            value = draw(st.one_of(LENGTH_VALUES, LENGTH_VALUES, BAD_LENGTH_VALUES))
        else:
            name = draw(st.sampled_from([b"transfer-encoding", b"Transfer-Encoding"]))
            value = draw(st.one_of(CODING_VALUES, CODING_VALUES, BAD_CODING_VALUES))
        fields.insert(draw(st.integers(0, len(fields))), (name, draw(OWS) + value + draw(OWS)))
    return fields


STATUSES = st.one_of(
    st.sampled_from([100, 102, 103, 199, 200, 201, 204, 205, 206, 299, 301, 304, 404, 500, 599]),
    # (101 is left out: h11 sends it only as the answer to an Upgrade, when HTTP/1 ends there.)
    st.integers(100, 599).filter(lambda status: status != 101),
)
CASES = st.builds(
    Case,
    http11=st.booleans(),
    # (CONNECT is left out: h11 takes a 2xx answer to it for a tunnel, no HTTP body at all.)
    method=st.sampled_from(
        ["GET", "GET", "HEAD", "HEAD", b"HEAD", b"GET", "POST", "PUT", "DELETE", "OPTIONS"]
    ),
    status=STATUSES,
    headers=app_headers(),
    known=st.one_of(st.none(), st.integers(0, 10**12)),
)


def decide(case: Case, known: int | None) -> Framing | FramingError:
    try:
        stated = framing.declared(case.headers)
    except FramingError as error:
        return error
    return framing.for_response(
        http11=case.http11, method=case.method, status=case.status, declared=stated, known=known
    )


def is_head(case: Case) -> bool:
    return case.method in ("HEAD", b"HEAD")


def gets_a_body(case: Case) -> bool:
    """Whether a GET with this status gets a body: how h11 frames the head of a HEAD's answer."""
    return framing.body_allowed("GET", case.status)


# ---- the properties ----------------------------------------------------------------------------


@PROPERTY
@given(case=CASES)
def test_what_h11_refuses_to_send_declared_refuses(case: Case) -> None:
    theirs = h11_sends(case, case.headers)
    ours = decide(case, case.known)
    event("h11 refuses" if isinstance(theirs, h11.LocalProtocolError) else "h11 sends")
    event("fastbody refuses" if isinstance(ours, FramingError) else "fastbody decides")
    if isinstance(theirs, h11.LocalProtocolError):
        assert isinstance(ours, FramingError), (theirs, ours)


@PROPERTY
@given(case=CASES)
def test_the_apps_head_framed_as_h11_frames_it(case: Case) -> None:
    """No length known to the server: the framing is the app's head's, as h11 sees it."""
    ours = decide(case, None)
    if isinstance(ours, FramingError):
        event("fastbody refuses")  # property 1 covers what h11 refuses; the rest is strictness
        return
    theirs = h11_sends(case, case.headers)
    assert isinstance(theirs, Sent), theirs
    assert (ours.delimit is Delimit.NONE) is h11_forbids_body(case)
    assert as_h11(ours) == theirs.body
    assert ours.close is (ours.delimit is Delimit.CLOSE)
    added = ours.header()
    expected = framing_fields(case.headers) + ([added] if added else [])
    stated = framing.declared(case.headers)
    if is_head(case) and gets_a_body(case) and stated.length is None and not stated.chunked:
        # Documented difference (for_response: "A HEAD may say what the GET would send"): fastbody
        # adds a length to a HEAD's head only when it knows it (here it does not) and otherwise
        # nothing; h11 writes the head the GET would get: Transfer-Encoding: chunked on HTTP/1.1,
        # no framing field on HTTP/1.0.
        event("documented difference: HEAD without a length")
        assert added is None
        assert theirs.fields == ([(b"transfer-encoding", b"chunked")] if case.http11 else [])
        return
    if not case.http11 and stated.chunked and gets_a_body(case):
        # The same delimitation (checked above: the connection's end, h11's Http10Writer; or no
        # body for a HEAD), but for_response only says what to add, and the app's
        # Transfer-Encoding: chunked stays in the head as far as it goes; h11 drops the field for
        # an HTTP/1.0 peer. (Who drops it is the integration's business: see the report.)
        event("HTTP/1.0, the app said chunked: h11 drops the field")
        assert theirs.fields == [field for field in expected if field[0] != b"transfer-encoding"]
        return
    event(f"same: {theirs.body[0]}")
    assert theirs.fields == expected


@PROPERTY
@given(case=CASES)
def test_the_head_fastbody_decides_needs_no_fix_from_h11(case: Case) -> None:
    """The head the integrations send (the app's fields and ``Framing.header()``), known length
    included: h11 as the server keeps its framing fields as they are and frames the body alike."""
    ours = decide(case, case.known)
    if isinstance(ours, FramingError):
        event("fastbody refuses")
        return
    added = ours.header()
    head = case.headers + ([added] if added else [])
    theirs = h11_sends(case, head)
    assert isinstance(theirs, Sent), theirs
    assert as_h11(ours) == theirs.body
    if added == (b"content-length", b"%d" % (ours.length or 0)):
        assert ours.length == case.known  # the length added is the one the server knows
        # h11 sends a Content-Length on any status; RFC 9110 8.6 forbids it on 1xx and 204, and
        # for_response's "1xx/204/304 get nothing added" (length_allowed: 204 and 1xx never).
        assert case.status >= 200 and case.status != 204, case
    stated = framing.declared(case.headers)
    if is_head(case) and gets_a_body(case) and added is None and stated.length is None and not stated.chunked:
        # The documented HEAD difference again (see above): nothing known, nothing added; h11
        # writes the GET's framing field.
        event("documented difference: HEAD without a length")
        assert theirs.fields == ([(b"transfer-encoding", b"chunked")] if case.http11 else [])
        return
    if not case.http11 and stated.chunked and gets_a_body(case):
        # HTTP/1.0 and the app's chunked (see above): h11 drops the field; the delimitation is
        # the same.
        event("HTTP/1.0, the app said chunked: h11 drops the field")
        assert theirs.fields == [field for field in framing_fields(head) if field[0] != b"transfer-encoding"]
        return
    event(f"no fix: {theirs.body[0]}")
    assert theirs.fields == framing_fields(head)
