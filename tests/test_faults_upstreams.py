"""Faulty and hostile upstreams through both reverse proxies (part of the standing fault suite).

The proxy runs in real processes: ``python -m uvicorn`` with fastbody's h11 and httptools
protocols (``ReverseProxy``) and ``python -m gunicorn`` with fastbody's gthread and sync workers
(``WSGIReverseProxy``), in front of raw-socket upstreams in this process; the client is a raw
socket whose bytes h11 parses. Three kinds of fault:

1. The upstream dies mid-body (FIN, or RST), inside a Content-Length body, inside a chunk, or
   between chunks: the client never gets a short body passed off as complete, the log blames the
   upstream, the dead connection is not pooled, the next request works, nothing is left held.
2. A table of hostile response heads, each with its verdict, compared with what h11 reads from
   the same bytes: the proxy never accepts what h11 refuses, and when both accept, the client
   gets what h11 reads.
3. Request smuggling through the proxy: payloads from a raw client, an upstream recording every
   byte it gets: no request reaches the upstream that the front end did not answer as its own,
   and each forwarded request is the one h11 parses from the payload.

Each death and table case checks the proxy worker's fds, pipes and RSS against its baseline
(``resources.held``), and each kind of fault is one row per server in the fault table.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytest.importorskip("httpx")
pytest.importorskip("h11")
pytest.importorskip("uvicorn")
pytest.importorskip("gunicorn")
pytest.importorskip("starlette")

import h11
from conftest import FaultTable
from hostile import (
    OK,
    Answer,
    Got,
    HostileUpstream,
    LogMark,
    Proxy,
    Reading,
    get,
    h11_reads,
    idle,
    proxy_fixture,
    steady,
    then_close,
)
from resources import Held, assert_released, settled
from servers import RawServer, wait_until

from fastbody.integrations.proxy.upstream import MAX_HEAD

KINDS = ["h11", "httptools", "gthread", "sync"]
ASGI = {"h11", "httptools"}
KIB, MIB = 1 << 10, 1 << 20
BLOB = random.Random(13).randbytes(MIB)
SENT = 300 * KIB  # what a dying upstream sends of its body before it dies
CHUNKED = b"Transfer-Encoding: chunked\r\n"
CLOSE = b"Connection: close\r\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# The upstream: a body that ends in the upstream's death, good bodies, and the table's heads


def die(conn: socket.socket, how: str) -> None:
    """End the connection with a FIN, or with an RST (``SO_LINGER`` 0, then close)."""
    if how == "rst":
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


DYING_BODIES = {
    # A Content-Length body, SENT of its bytes.
    "length": OK + b"Content-Length: %d\r\n\r\n" % MIB + BLOB[:SENT],
    # A chunk of MIB bytes, SENT of them.
    "in-chunk": OK + CHUNKED + b"\r\n%x\r\n" % MIB + BLOB[:SENT],
    # A whole chunk of SENT bytes with its CRLF; no next size line.
    "between-chunks": OK + CHUNKED + b"\r\n%x\r\n" % SENT + BLOB[:SENT] + b"\r\n",
}
HOWS = ["fin", "rst"]


def dying(where: str, how: str) -> Answer:
    def answer(conn: socket.socket, stopping: threading.Event) -> None:
        conn.sendall(DYING_BODIES[where])
        stopping.wait(0.3)  # the proxy is inside the body, waiting for more
        die(conn, how)

    return answer


def chunked(data: bytes, size: int) -> bytes:
    pieces = [
        b"%x\r\n%s\r\n" % (len(data[at : at + size]), data[at : at + size])
        for at in range(0, len(data), size)
    ]
    return b"".join(pieces) + b"0\r\n\r\n"


GOOD = {
    # Spliced bodies (the pipe pool warms up): the warm-up before a baseline, and the probe that
    # the proxy still serves after a fault. Each says Connection: close (an upstream's end right
    # after a kept-alive answer may come after the proxy pooled the connection): these are never
    # pooled, so an idle connection after a death is the dead one.
    "/good-length": then_close(OK + CLOSE + b"Content-Length: %d\r\n\r\n" % MIB + BLOB),
    "/good-chunked": then_close(OK + CLOSE + CHUNKED + b"\r\n" + chunked(BLOB, 256 * KIB)),
}


@dataclass(frozen=True)
class Case:
    """A hostile answer: the bytes the upstream sends (then its FIN, unless ``keep_open``), and
    the verdict at the client, the same through both proxies: ``502`` (before the head), ``cut``
    (the head, then the client connection closed without the body's framed end), ``ok`` (what
    h11 reads, complete)."""

    name: str
    data: bytes
    verdict: str
    keep_open: bool = False  # bytes follow the message: never pooled


def with_length(head: bytes, body: bytes = b"hello") -> bytes:
    return OK + head + b"\r\n" + body


BIG = b"X-Big: " + b"a" * (MAX_HEAD + KIB) + b"\r\n"
NEAR = b"X-Big: " + b"a" * (MAX_HEAD - 4 * KIB) + b"\r\n"
LENGTH_5 = b"Content-Length: 5\r\n"
HELLO_CHUNKED = b"5\r\nhello\r\n0\r\n\r\n"

CASES = [
    # Content-Length and Transfer-Encoding together, either order
    Case("cl-then-te", with_length(LENGTH_5 + CHUNKED, HELLO_CHUNKED), "502"),
    Case("te-then-cl", with_length(CHUNKED + LENGTH_5, HELLO_CHUNKED), "502"),
    # Content-Length: repeated, lists, signs, spaces, bases, sizes
    Case("cl-duplicate-equal", with_length(LENGTH_5 + LENGTH_5), "502"),
    Case("cl-duplicate-different", with_length(LENGTH_5 + b"Content-Length: 6\r\n", b"hello!"), "502"),
    Case("cl-list-equal", with_length(b"Content-Length: 5, 5\r\n"), "502"),
    Case("cl-list-different", with_length(b"Content-Length: 5, 6\r\n", b"hello!"), "502"),
    Case("cl-plus", with_length(b"Content-Length: +5\r\n"), "502"),
    Case("cl-minus", with_length(b"Content-Length: -5\r\n"), "502"),
    Case("cl-space-before", with_length(b"Content-Length:  5\r\n"), "ok"),  # OWS, stripped
    Case("cl-space-after", with_length(b"Content-Length: 5 \r\n"), "ok"),
    Case("cl-space-inside", with_length(b"Content-Length: 5 5\r\n"), "502"),
    Case("cl-hex", with_length(b"Content-Length: 0x5\r\n"), "502"),
    Case("cl-space-before-colon", with_length(b"Content-Length : 5\r\n"), "502"),
    Case("cl-2**63", with_length(b"Content-Length: %d\r\n" % 2**63), "502"),
    Case("cl-2**64", with_length(b"Content-Length: %d\r\n" % 2**64), "502"),
    Case("cl-10**30", with_length(b"Content-Length: %d\r\n" % 10**30), "502"),
    # Transfer-Encoding other than one chunked
    Case("te-chunked-twice", with_length(b"Transfer-Encoding: chunked, chunked\r\n", HELLO_CHUNKED), "502"),
    Case("te-identity", with_length(b"Transfer-Encoding: identity\r\n"), "502"),
    # Chunk sizes: bad, negative, huge, prefixed; data longer than its size
    Case("chunk-size-bad", with_length(CHUNKED, b"zz\r\nhello\r\n0\r\n\r\n"), "502"),
    Case("chunk-size-negative", with_length(CHUNKED, b"-5\r\nhello\r\n0\r\n\r\n"), "502"),
    Case("chunk-size-0x", with_length(CHUNKED, b"0x5\r\nhello\r\n0\r\n\r\n"), "502"),
    Case("chunk-size-17-digits", with_length(CHUNKED, b"1" + b"0" * 16 + b"\r\nhello"), "502"),
    Case("chunk-size-21-digits", with_length(CHUNKED, b"1" + b"0" * 20 + b"\r\nhello"), "502"),
    # 2**60 - 1 (15 digits) is a size the proxy takes: the head goes, then the upstream's end cuts the body.
    Case("chunk-size-15-digits", with_length(CHUNKED, b"f" * 15 + b"\r\nhello"), "cut"),
    Case("chunk-data-overrun", with_length(CHUNKED, b"5\r\nhelloXX\r\n0\r\n\r\n"), "cut"),
    # A bare LF: the head ends where h11 ends it (what follows the message is never pooled)
    Case("bare-lf", OK + b"Content-Length: 5\n\nhello\r\n\r\nWORLD", "ok", keep_open=True),
    Case("bare-lf-after", OK + b"Content-Length: 5\r\nX-A: b\n\nhello\r\n\r\nWORLD", "ok", keep_open=True),
    Case("bare-lf-status-line", b"HTTP/1.1 200 OK\n" + LENGTH_5 + b"\r\nhello", "ok"),
    # Control bytes and folding inside header values
    Case("nul-in-value", with_length(b"X-A: a\x00b\r\n" + LENGTH_5), "502"),
    Case("cr-in-value", with_length(b"X-A: a\rb\r\n" + LENGTH_5), "502"),
    Case("obs-fold", with_length(b"X-A: a\r\n b\r\n" + LENGTH_5), "502"),
    # Head size: just under the proxy's limit (MAX_HEAD), and over it
    Case("head-under-limit", with_length(NEAR + LENGTH_5), "ok"),
    Case("head-over-limit", with_length(BIG + LENGTH_5), "502"),
    # 1xx floods (all at once; a trickle is test_proxy_hostile's /processing), and a 101
    Case("100-flood", b"HTTP/1.1 100 Continue\r\n\r\n" * 3000 + with_length(LENGTH_5), "ok"),
    Case("102-flood", b"HTTP/1.1 102 Processing\r\n\r\n" * 500 + with_length(LENGTH_5), "ok"),
    Case(
        "101-unasked",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n" + with_length(LENGTH_5),
        "502",
    ),
    # No head at all, HTTP/0.9-style replies, status lines with junk
    Case("no-head", b"", "502"),
    Case("http09", b"hello, no status line\n", "502"),
    Case("http09-blank-line", b"<html>hello</html>\r\n\r\n", "502"),
    Case("status-code-junk", b"HTTP/1.1 2x0 OK\r\n" + LENGTH_5 + b"\r\nhello", "502"),
    Case("status-no-space", b"HTTP/1.1 200OK\r\n" + LENGTH_5 + b"\r\nhello", "502"),
    # h11 takes any byte but NUL and whitespace in a reason phrase or a field value; a control
    # byte is one gunicorn and uvicorn's httptools cannot send (they answered 500, or nothing)
    Case("status-control-byte", b"HTTP/1.1 200 O\x01K\r\n" + LENGTH_5 + b"\r\nhello", "502"),
    Case("status-del-byte", b"HTTP/1.1 200 O\x7fK\r\n" + LENGTH_5 + b"\r\nhello", "502"),
    Case("status-obs-text", b"HTTP/1.1 200 O\xe9K\r\n" + LENGTH_5 + b"\r\nhello", "ok"),
    Case("control-byte-in-value", with_length(b"X-A: a\x01b\r\n" + LENGTH_5), "502"),
    Case("del-byte-in-value", with_length(b"X-A: a\x7fb\r\n" + LENGTH_5), "502"),
    Case("status-leading-space", b" HTTP/1.1 200 OK\r\n" + LENGTH_5 + b"\r\nhello", "502"),
    Case("status-version-junk", b"HTTP/1.x 200 OK\r\n" + LENGTH_5 + b"\r\nhello", "502"),
    # Close-delimited: passed on whole, never pooled
    Case("http10-close-delimited", b"HTTP/1.0 200 OK\r\n\r\n" + BLOB[: 200 * KIB], "ok"),
    Case(
        "http10-keep-alive-no-length",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n" + BLOB[:5000],
        "ok",
    ),
    Case("http11-close-delimited", OK + b"Connection: close\r\n\r\n" + BLOB[: 200 * KIB], "ok"),
]
CASE_IDS = [case.name for case in CASES]


def answers() -> dict[str, Answer]:
    made: dict[str, Answer] = dict(GOOD)
    for where in DYING_BODIES:
        for how in HOWS:
            made[f"/die/{where}/{how}"] = dying(where, how)
    for case in CASES:
        made[f"/case/{case.name}"] = case.data if case.keep_open else then_close(case.data)
    return made


@pytest.fixture(scope="module")
def upstream() -> Iterator[HostileUpstream]:
    server = HostileUpstream(answers())
    yield server
    server.close()


# The smuggling tests' upstream: records every byte, answers each request h11 parses


@dataclass
class Recorded:
    number: int
    connection: int
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    complete: bool = False


class RecordingUpstream(RawServer):
    """Records every byte it receives on each connection (``received``), parses it with h11
    as a server, and answers each whole request with ``upstream request N`` (N counts requests
    from 1 across connections); what h11 refuses is recorded in ``errors``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[Recorded] = []
        self.received: dict[int, bytearray] = {}
        self.errors: list[str] = []
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        with self.lock:
            number = len(self.received)
            self.received[number] = bytearray()
        parser = h11.Connection(h11.SERVER)
        current: Recorded | None = None
        with conn:
            conn.settimeout(5)
            try:
                while not self.stopping.is_set():
                    data = conn.recv(65536)
                    with self.lock:
                        self.received[number] += data
                    parser.receive_data(data)
                    while (event := parser.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
                        if isinstance(event, h11.Request):
                            with self.lock:
                                current = Recorded(
                                    len(self.requests) + 1,
                                    number,
                                    event.method,
                                    event.target,
                                    list(event.headers.raw_items()),
                                )
                                self.requests.append(current)
                        elif isinstance(event, h11.Data) and current is not None:
                            current.body += event.data
                        elif isinstance(event, h11.EndOfMessage) and current is not None:
                            current.complete = True
                            self.respond(conn, parser, b"upstream request %d" % current.number)
                            parser.start_next_cycle()
                        elif isinstance(event, h11.ConnectionClosed):
                            return
                    if not data:
                        return
            except h11.RemoteProtocolError as error:
                with self.lock:
                    self.errors.append(f"connection {number}: {error}")
            except OSError:
                pass  # the proxy closed first, or went quiet

    def respond(self, conn: socket.socket, parser: h11.Connection, body: bytes) -> None:
        headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        out = parser.send(h11.Response(status_code=200, headers=headers)) or b""
        out += parser.send(h11.Data(data=body)) or b""
        out += parser.send(h11.EndOfMessage()) or b""
        conn.sendall(out)


@pytest.fixture(scope="module")
def recording() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


proxy = proxy_fixture(KINDS, RAW_UPSTREAM="upstream", RECORD_UPSTREAM="recording")


# Holdings and the fault table


@pytest.fixture(scope="module")
def baseline(proxy: Proxy) -> Held:
    """The proxy worker's holdings once a spliced Content-Length and a chunked body went through
    (its pipe pool warm, no upstream connection pooled)."""
    for path in GOOD:
        probe(proxy, path)
    return steady(proxy.pid)


def probe(proxy: Proxy, path: str = "/good-length") -> None:
    """The proxy still serves: a whole spliced body, by sha256."""
    got = get(proxy, path)
    assert (got.status, got.complete, len(got.body), sha(got.body)) == (200, True, MIB, sha(BLOB))


@dataclass
class Row:
    before: Held
    after: Held | None = None
    results: Counter[str] = field(default_factory=Counter)
    cases: int = 0
    pooled: int = 0  # idle upstream connections (fds) in ``after``


class Ledger:
    """Rows of the fault table, one per kind of fault and server, filled in case by case:
    holdings before the first case and after the last, and how many cases ended which way."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Row] = {}

    def add(self, fault: str, kind: str, result: str, before: Held, after: Held, pooled: int = 0) -> None:
        row = self.rows.setdefault((fault, kind), Row(before))
        row.after, row.cases, row.pooled = after, row.cases + 1, pooled
        row.results[result] += 1


@pytest.fixture(scope="module")
def ledger(fault_table: FaultTable) -> Iterator[Ledger]:
    kept = Ledger()
    yield kept
    for (fault, kind), row in kept.rows.items():
        result = ", ".join(f"{name} {count}" for name, count in sorted(row.results.items()))
        after = f"{row.after} ({row.pooled} pooled)" if row.pooled else row.after
        fault_table.record(f"{fault} ({row.cases} cases)", server_name(kind), result, row.before, after)


def server_name(kind: str) -> str:
    return f"uvicorn {kind}, ReverseProxy" if kind in ASGI else f"gunicorn {kind}, WSGIReverseProxy"


def released(proxy: Proxy, baseline: Held, pooled: int = 0) -> Held:
    """The worker's holdings, back to ``baseline`` and ``pooled`` idle upstream connections
    (else the failure lists its fds)."""
    pid = proxy.pid
    allowed = Held(baseline.fds + pooled, baseline.pipes, baseline.rss_mib)
    after = settled(pid, allowed)
    try:
        assert_released(allowed, after)
    except AssertionError as error:
        import subprocess

        ss = subprocess.run(["ss", "-tanpe"], capture_output=True, text=True).stdout
        ss = "\n".join(line for line in ss.splitlines() if f"pid={pid}," in line)
        raise AssertionError(f"{error}; fds now: {open_fds(pid)}\n{ss}") from None
    return after


def open_fds(pid: int) -> list[str]:
    found = []
    for name in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        try:
            found.append(f"{name}={os.readlink(f'/proc/{pid}/fd/{name}')}")
        except FileNotFoundError:
            continue
    return found


def verdict_of(got: Got) -> str:
    """``502``/``504`` (the proxy's own answer, before any upstream head), ``cut`` (a head, then
    the connection closed without the framed end), ``ok`` (a complete answer), ``nothing``."""
    if got.status is None:
        return "nothing"
    if got.status in (502, 504) and got.complete and got.body in (b"Bad Gateway\n", b"Gateway Timeout\n"):
        return str(got.status)
    return "ok" if got.complete else "cut"


# 1. The upstream dies mid-body

BLAMED = re.compile(
    r"(fastbody: upstream (closed|reset|127\.0\.0\.1:\d+ failed)|proxy: GET http://\S+: .*mid-body)"
)
"""How the proxies' logs blame the upstream (``integrations/failures.py``, ``proxy.asgi``)."""


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("where", list(DYING_BODIES))
def test_upstream_dying_mid_body(proxy: Proxy, baseline: Held, ledger: Ledger, where: str, how: str) -> None:
    mark = LogMark(proxy)
    got = get(proxy, f"/die/{where}/{how}")
    verdict = verdict_of(got)
    assert verdict in ("502", "cut"), f"a short body passed off as complete? {got}"
    if verdict == "cut":
        assert got.status == 200
        assert 0 < len(got.body) <= SENT and sha(got.body) == sha(BLOB[: len(got.body)])
        if how == "fin":  # everything the upstream sent before its end was forwarded
            assert len(got.body) == SENT
    wait_until(lambda: BLAMED.search(mark.new()), 5, f"the upstream blamed in the log:\n{mark.new()}")
    assert "client went away" not in mark.new()
    assert idle(proxy) == 0  # the dead connection was not pooled
    probe(proxy)
    after = released(proxy, baseline)
    fault = f"upstream dies mid-body ({', '.join(DYING_BODIES)}; FIN, RST)"
    ledger.add(fault, proxy.kind, verdict, baseline, after)


# 2. Hostile heads, against what h11 reads of the same bytes


def agrees_with_h11(got: Got, verdict: str, reference: Reading) -> None:
    """The proxy never accepts what h11 refuses; when both accept, the client gets what h11 read."""
    if reference.status is None:  # h11 read no final head: neither may the client
        assert verdict in ("502", "504"), f"h11 refused the head ({reference.error}); the client got {got}"
    if verdict == "ok":
        assert reference.complete and reference.error is None, f"h11 refused what was forwarded: {reference}"
        assert (got.status, len(got.body), sha(got.body)) == (
            reference.status,
            len(reference.body),
            sha(reference.body),
        )
    elif verdict == "cut":
        assert got.status == reference.status, f"a head h11 did not read was forwarded: {reference}"
        assert reference.body.startswith(got.body), "the client got bytes h11 did not read as the body"


HEADS = "hostile upstream heads"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_hostile_head(proxy: Proxy, baseline: Held, ledger: Ledger, case: Case) -> None:
    reference = h11_reads(case.data, eof=not case.keep_open)
    mark = LogMark(proxy)
    got = get(proxy, f"/case/{case.name}")
    verdict = verdict_of(got)
    agrees_with_h11(got, verdict, reference)
    assert verdict == case.verdict, f"{got} (h11: {reference})"
    if verdict in ("502", "504"):
        wait_until(lambda: f"answered {verdict}" in mark.new(), 5, f"the refusal logged:\n{mark.new()}")
    elif verdict == "cut":
        wait_until(lambda: BLAMED.search(mark.new()), 5, f"the upstream blamed in the log:\n{mark.new()}")
    # Pooled only a kept-alive message h11 read whole with nothing after it (the upstream's end
    # may come just after the proxy pooled it: it is dropped when next taken).
    pooled = idle(proxy)
    assert pooled <= (verdict == "ok" and reference.reusable), (
        "a connection with more bytes, or ended, was pooled"
    )
    after = released(proxy, Held(baseline.fds + pooled, baseline.pipes, baseline.rss_mib))
    h11_said = "h11 refuses" if reference.error or not reference.complete else "h11 accepts"
    ledger.add(HEADS, proxy.kind, f"{verdict} ({h11_said})", baseline, after, pooled)


# 3. Request smuggling through the proxy

HOST = b"Host: proxy\r\n"
FOLLOW = b"GET /rec/follow HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n"
"""Sent after every payload: the request a smuggled prefix would poison."""
SMUGGLED = b"GET /rec/smuggled HTTP/1.1\r\n" + HOST + b"\r\n"


def post(target: bytes, fields: bytes, body: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    return b"POST " + target + b" " + version + b"\r\n" + HOST + fields + b"\r\n" + body


def te_cl(te: bytes) -> bytes:
    """TE.CL: a chunk that holds a whole request, and a Content-Length that ends before it: a
    reader that takes the length leaves the request behind as the next one."""
    chunk = b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    return post(b"/rec/te-cl", b"Content-Length: 4\r\n" + te, chunk)


def cl_te(te: bytes) -> bytes:
    """CL.TE: a Content-Length over a last chunk and a request after it: a reader that takes the
    chunks leaves the request behind."""
    body = b"0\r\n\r\n" + SMUGGLED
    return post(b"/rec/cl-te", b"Content-Length: %d\r\n" % len(body) + te, body)


def chunks(target: bytes, body: bytes, fields: bytes = b"") -> bytes:
    return post(target, fields + CHUNKED, body)


TES = {
    "plain": CHUNKED,
    "chunked-identity": b"Transfer-Encoding: chunked, identity\r\n",
    "identity-chunked": b"Transfer-Encoding: identity, chunked\r\n",
    "space-before-colon": b"Transfer-Encoding : chunked\r\n",
    "tab": b"Transfer-Encoding:\tchunked\r\n",
    "vertical-tab": b"Transfer-Encoding: \x0bchunked\r\n",
    "xchunked": b"Transfer-Encoding: xchunked\r\n",
    "quoted": b'Transfer-Encoding: "chunked"\r\n',
    "upper-case": b"Transfer-Encoding: CHUNKED\r\n",
    "duplicate-identity": CHUNKED + b"Transfer-Encoding: identity\r\n",
    "duplicate-chunked": CHUNKED + CHUNKED,
    "obs-fold": b"Transfer-Encoding:\r\n chunked\r\n",
    "folded-into-x": b"X-A: a\r\n Transfer-Encoding: chunked\r\n",
}

PAYLOADS: dict[str, bytes] = {
    **{f"te-cl {name}": te_cl(te) for name, te in TES.items()},
    "cl-te plain": cl_te(CHUNKED),
    "cl-te chunked-identity": cl_te(b"Transfer-Encoding: chunked, identity\r\n"),
    "cl-te space-before-colon": cl_te(b"Transfer-Encoding : chunked\r\n"),
    "cl-0 then a request": b"GET /rec/a HTTP/1.1\r\n" + HOST + b"Content-Length: 0\r\n\r\n" + SMUGGLED,
    "cl body then a request": post(b"/rec/a", LENGTH_5, b"hello" + SMUGGLED),
    "cl-cl different": post(
        b"/rec/a", LENGTH_5 + b"Content-Length: %d\r\n" % (5 + len(SMUGGLED)), b"hello" + SMUGGLED
    ),
    "cl list": post(b"/rec/a", b"Content-Length: 5, 5\r\n", b"hello"),
    "cl plus": post(b"/rec/a", b"Content-Length: +5\r\n", b"hello"),
    "chunk-size 0x": chunks(b"/rec/a", b"0x5\r\nhello\r\n0\r\n\r\n"),
    "chunk-size 20 digits": chunks(b"/rec/a", b"0" * 19 + b"5\r\nhello\r\n0\r\n\r\n"),
    "chunk-size overflow": chunks(b"/rec/a", b"1" + b"0" * 16 + b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk-size negative": chunks(b"/rec/a", b"-5\r\nhello\r\n0\r\n\r\n"),
    "chunk-size leading space": chunks(b"/rec/a", b" 5\r\nhello\r\n0\r\n\r\n"),
    "chunk-ext bare LF": chunks(b"/rec/a", b"5;a\nb\r\nhello\r\n0\r\n\r\n"),
    "chunk lines bare LF": chunks(b"/rec/a", b"5\nhello\n0\n\n"),
    "chunk trailer content-length": chunks(b"/rec/a", b"5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n"),
    "head bare LF": b"POST /rec/a HTTP/1.1\nHost: proxy\nContent-Length: 5\n\nhello",
    "head bare CR": b"POST /rec/a HTTP/1.1\r\nHost: proxy\r\nX-A: a\rContent-Length: 5\r\n\r\nhello",
    "nul in a field": post(b"/rec/a", b"X-A: a\x00b\r\n" + LENGTH_5, b"hello"),
    "cl obs-fold": post(b"/rec/a", b"Content-Length: 5\r\n 0\r\n", b"hello" + b"x" * 45),
    "absolute-form": b"GET http://evil.example/rec/abs HTTP/1.1\r\n" + HOST + b"\r\n",
    "absolute-form outside the mount": b"GET http://evil.example/smuggled HTTP/1.1\r\n" + HOST + b"\r\n",
    "expect 100-continue cl": post(b"/rec/e", b"Expect: 100-continue\r\n" + LENGTH_5, b"hello"),
    "expect 100-continue chunked": chunks(b"/rec/e", HELLO_CHUNKED, b"Expect: 100-continue\r\n"),
    "http/1.0 chunked": post(b"/rec/a", CHUNKED, HELLO_CHUNKED, b"HTTP/1.0") + SMUGGLED,
    "get with a body": b"GET /rec/a HTTP/1.1\r\n" + HOST + LENGTH_5 + b"\r\nhello",
}


@dataclass
class Parsed:
    """A request as h11 (a server) parses it."""

    method: bytes
    target: bytes
    body: bytes = b""
    complete: bool = False


def h11_parses(data: bytes) -> tuple[list[Parsed], str]:
    """The requests h11 parses from ``data`` (answering each, as a server would), and why it
    stopped: ``more`` (it needs more bytes), ``close`` (a request ended the connection), or the
    error."""
    server = h11.Connection(h11.SERVER)
    server.receive_data(data)
    parsed: list[Parsed] = []
    try:
        while True:
            event = server.next_event()
            if event is h11.NEED_DATA:
                return parsed, "more"
            if isinstance(event, h11.Request):
                parsed.append(Parsed(event.method, event.target))
            elif isinstance(event, h11.Data):
                parsed[-1].body += event.data
            elif isinstance(event, h11.EndOfMessage):
                parsed[-1].complete = True
                server.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                server.send(h11.EndOfMessage())
                if server.our_state is h11.MUST_CLOSE:
                    return parsed, "close"
                server.start_next_cycle()
            else:
                return parsed, f"stopped at {event!r}"
    except h11.RemoteProtocolError as error:
        return parsed, f"error: {error}"


@dataclass
class Answered:
    status: int
    body: bytes
    complete: bool


def answers_to(data: bytes) -> list[Answered]:
    """The responses in ``data``, in order (1xx skipped), the last perhaps incomplete."""
    found: list[Answered] = []
    while data:
        reading = h11_reads(data, eof=True)
        if reading.status is None:
            break
        found.append(Answered(reading.status, reading.body, reading.complete))
        if not reading.complete:
            break
        data = reading.rest
    return found


def exchange(proxy: Proxy, payload: bytes) -> tuple[bytes, bool]:
    """Send ``payload`` and ``FOLLOW`` on one raw connection; what came back, and whether the
    server closed the connection (else it went quiet for 1 s)."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=1) as sock:
        sock.sendall(payload + FOLLOW)
        data = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                got = sock.recv(65536)
            except TimeoutError:
                return data, False
            except ConnectionResetError:
                return data, True
            if not got:
                return data, True
            data += got
    return data, False


def below_mount(target: bytes) -> bytes:
    """What the upstream gets for a target under ``/rec`` (origin- or absolute-form)."""
    parts = urlsplit(target)
    path = parts.path.removeprefix(b"/rec") or b"/"
    return path + (b"?" + parts.query if parts.query else b"")


SMUGGLING: dict[str, dict[str, str]] = {}
"""What each front end did with each payload, by payload, then kind."""

ANSWERED_BY_UPSTREAM = re.compile(rb"upstream request (\d+)")


@pytest.fixture(scope="module")
def smuggling_table(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, str]]]:
    """Writes the payload → front-end table at the end (Markdown), to ``$FASTBODY_SMUGGLING_TABLE``
    if set, else into the run's temporary directory."""
    yield SMUGGLING
    kinds = [kind for kind in KINDS if any(kind in row for row in SMUGGLING.values())]
    lines = ["| payload | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for name, row in SMUGGLING.items():
        lines.append(f"| {name} | " + " | ".join(row.get(kind, "") for kind in kinds) + " |")
    path = os.environ.get("FASTBODY_SMUGGLING_TABLE") or str(tmp_path_factory.getbasetemp() / "smuggling.md")
    Path(path).write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_request_smuggling(
    proxy: Proxy,
    recording: RecordingUpstream,
    baseline: Held,
    ledger: Ledger,
    smuggling_table: dict[str, dict[str, str]],
    name: str,
) -> None:
    payload = PAYLOADS[name] + FOLLOW
    parsed, stop = h11_parses(payload)
    with recording.lock:
        first, errors = len(recording.requests), len(recording.errors)
    data, closed = exchange(proxy, PAYLOADS[name])
    answered = answers_to(data)
    with recording.lock:
        seen = [replace_body(r) for r in recording.requests[first:]]
        new_errors = recording.errors[errors:]

    statuses = " ".join(str(a.status) for a in answered) or "none"
    did = f"{statuses}, {'closed' if closed else 'left open'}; forwarded {len(seen)}"
    smuggling_table.setdefault(name, {})[proxy.kind] = did
    context = f"{name}: the front end answered {did}; h11 parses {parsed} ({stop}); the upstream saw {seen}"

    check_forwarded(parsed, answered, seen, new_errors, context)

    info = proxy.info()
    pooled = int(info["idle"]) + int(info["idle_rec"])
    after = released(proxy, baseline, pooled)
    outcome = "forwarded" if seen else "refused"
    ledger.add("request smuggling", proxy.kind, outcome, baseline, after, pooled)


def check_forwarded(
    parsed: list[Parsed], answered: list[Answered], seen: list[Recorded], errors: list[str], context: str
) -> None:
    """No request reached the upstream that the front end did not answer as its own, and each
    is the request h11 parses at that place of the payload (``parsed``)."""
    assert not errors, f"the upstream could not parse what the proxy sent: {errors}; {context}"
    # Every request the upstream answered came back to the client as an answer of its own, in order.
    numbers = [int(m.group(1)) for a in answered if (m := ANSWERED_BY_UPSTREAM.fullmatch(a.body))]
    assert numbers == [r.number for r in seen if r.complete], context
    # Only the last may be unfinished (a body the front end was still reading when the client left).
    assert all(r.complete for r in seen[:-1]), context
    # Each request the upstream saw is the request h11 parses at that place of the payload.
    places = [i for i, a in enumerate(answered) if ANSWERED_BY_UPSTREAM.fullmatch(a.body)]
    assert len(seen) <= len(places) + 1, context
    for place, request in zip([*places, len(answered)], seen, strict=False):
        assert place < len(parsed), f"the front end forwarded a request h11 does not parse; {context}"
        reference = parsed[place]
        assert (request.method, request.target) == (reference.method, below_mount(reference.target)), context
        if request.complete:
            assert (len(request.body), sha(request.body)) == (len(reference.body), sha(reference.body)), (
                context
            )
        else:
            assert reference.body.startswith(request.body), context
        fields = [field.lower() for field, _ in request.headers]
        assert fields.count(b"content-length") + fields.count(b"transfer-encoding") <= 1, context
        assert b"smuggled" not in request.target or request.complete, context
    # The front end's own answers: none from the upstream past what it forwarded.
    assert len(seen) <= len(parsed), context


def replace_body(request: Recorded) -> Recorded:
    """A snapshot of a recorded request (its body may still grow on the upstream's thread)."""
    return Recorded(
        request.number,
        request.connection,
        request.method,
        request.target,
        list(request.headers),
        bytes(request.body),
        request.complete,
    )


def test_the_smuggling_check_can_fail() -> None:
    """``check_forwarded`` against what a smuggled request would leave: an upstream request
    nobody answered, one the front end did not parse, a body other than h11's."""
    parsed = [
        Parsed(b"POST", b"/rec/a", b"0\r\n\r\n" + SMUGGLED, True),
        Parsed(b"GET", b"/rec/follow", b"", True),
    ]
    post_a = Recorded(
        1, 0, b"POST", b"/a", [(b"content-length", b"%d" % len(parsed[0].body))], parsed[0].body, True
    )
    follow = Recorded(2, 0, b"GET", b"/follow", [], b"", True)
    answered = [Answered(200, b"upstream request 1", True), Answered(200, b"upstream request 2", True)]
    check_forwarded(parsed, answered, [post_a, follow], [], "as parsed")  # what must pass
    smuggled = Recorded(2, 0, b"GET", b"/smuggled", [], b"", True)
    short = Recorded(1, 0, b"POST", b"/a", [(b"transfer-encoding", b"chunked")], b"", True)
    wrong: list[tuple[list[Answered], list[Recorded]]] = [
        (answered[:1], [post_a, smuggled]),  # one answer, two requests upstream
        (answered, [post_a, smuggled]),  # the second is not the follow-up h11 parses
        (answered, [short, follow]),  # the body ends at the last chunk
        ([*answered, Answered(200, b"upstream request 3", True)], [post_a, follow, smuggled]),
    ]
    for answers, seen in wrong:
        with pytest.raises(AssertionError):
            check_forwarded(parsed, answers, seen, [], "smuggled")
