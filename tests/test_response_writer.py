"""fastbody.ResponseWriter: head, framing and pieces on real sockets, read back by h11 as a
client would; exact counts in stats(), errors that carry them, timeouts that mean what they say."""

from __future__ import annotations

import io
import os
import socket
import subprocess
from typing import Any

import h11
import pytest
from conftest import ArrivalWatch, StatsDelta, fd_count, feed_socket, run_async, sha256, tcp_pair

import fastbody
from fastbody import framing

HEAD = b"HTTP/1.1 200 OK\r\nserver: test\r\n"


def head_for(result: framing.Framing) -> bytes:
    field = result.header()
    extra = b"%s: %s\r\n" % field if field else b""
    return HEAD + extra + b"\r\n"


def respond(
    sock: socket.socket, result: framing.Framing, pieces: list[tuple[Any, dict[str, Any]]], kind: str
) -> int:
    """Send ``pieces`` as one response through a writer on the blocking or an asyncio driver."""
    writer = fastbody.ResponseWriter(sock, result, head=head_for(result), timeout=10)
    if kind == "blocking":
        for index, (source, options) in enumerate(pieces):
            writer.send(source, last=index == len(pieces) - 1, **options)
        return writer.sent

    async def send_all() -> int:
        for index, (source, options) in enumerate(pieces):
            await writer.asend(source, last=index == len(pieces) - 1, **options)
        return writer.sent

    sock.setblocking(False)
    return int(run_async(send_all(), kind))


def read_response(client: socket.socket, method: str = "GET") -> tuple[h11.Response, bytes]:
    """The response as h11 parses it: a framing error or a body cut short fails here."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    body, response = bytearray(), None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(client.recv(1 << 20))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert response is not None
            return response, bytes(body)
        else:
            raise AssertionError(f"unexpected {event!r}")


def decide(known: int | None, **options: Any) -> framing.Framing:
    return framing.for_response(
        http11=options.get("http11", True),
        method="GET",
        status=200,
        declared=framing.declared(options.get("headers", [])),
        known=known,
    )


KINDS = ["blocking", "asyncio", "uvloop"]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    if request.param != "blocking":
        run_async(__import__("asyncio").sleep(0), request.param)  # the loop library's own fds first
    return str(request.param)


def receive_in_thread(client: socket.socket) -> Any:
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1)
    future = pool.submit(read_response, client)
    pool.shutdown(wait=False)
    return future


@pytest.mark.parametrize("size", [0, 1000, 40 << 10, 3 << 20])
def test_file_gets_content_length(make_file: Any, kind: str, size: int) -> None:
    data = os.urandom(size)
    server, client = tcp_pair()
    moved = StatsDelta()
    with server, client, open(make_file(data), "rb") as file:
        source = fastbody.describe(file)
        result = decide(source.length)
        answer = receive_in_thread(client)
        assert respond(server, result, [(source, {})], kind) == size
        response, body = answer.result(30)
    assert dict(response.headers)[b"content-length"] == b"%d" % size
    assert sha256(body) == sha256(data)
    path = "sendfile" if size >= fastbody.plan.SMALL_BODY else "copy"
    assert moved() == ({path: size} if size else {})


def test_socket_of_unknown_length_is_chunked_by_what_is_ready(kind: str) -> None:
    data = os.urandom(5 << 20)
    server, client = tcp_pair()
    source = feed_socket(data, chunk=300 << 10)
    moved = StatsDelta()
    with server, client, source:
        answer = receive_in_thread(client)
        assert respond(server, decide(None), [(source, {})], kind) == len(data)
        response, body = answer.result(30)
    assert dict(response.headers)[b"transfer-encoding"] == b"chunked"
    assert sha256(body) == sha256(data)
    assert sum(moved().values()) == len(data)
    assert moved().get("splice", 0) > len(data) // 2


def test_pipe_with_buffered_bytes_is_chunked_in_order(kind: str, make_file: Any) -> None:
    data = os.urandom(2 << 20)
    process = subprocess.Popen(["cat", make_file(data)], stdout=subprocess.PIPE)
    assert process.stdout is not None
    process.stdout.peek(1)  # some bytes now wait in Python's buffer, invisible to the kernel
    server, client = tcp_pair()
    with server, client:
        answer = receive_in_thread(client)
        assert respond(server, decide(None), [(process.stdout, {})], kind) == len(data)
        _, body = answer.result(30)
    process.stdout.close()
    process.wait(10)
    assert sha256(body) == sha256(data)


def test_pieces_each_one_chunk(kind: str, make_file: Any) -> None:
    data = os.urandom(100 << 10)
    path = make_file(data)
    server, client = tcp_pair()
    pieces: list[tuple[Any, dict[str, Any]]] = [
        (b"head-", {}),
        (open(path, "rb"), {"count": 50 << 10}),
        (iter([b"a", b"", b"bc"]), {}),
        (io.BytesIO(b"tail"), {}),
    ]
    with server, client:
        answer = receive_in_thread(client)
        sent = respond(server, decide(None), pieces, kind)
        _, body = answer.result(30)
    expected = b"head-" + data[: 50 << 10] + b"abc" + b"tail"
    assert sent == len(expected) and body == expected


def test_http10_unknown_length_is_delimited_by_close(kind: str) -> None:
    result = decide(None, http11=False)
    assert result.close
    server, client = tcp_pair()
    with client:
        with server:
            respond(server, result, [(iter([b"x" * 100, b"y" * 50]), {})], kind)
        raw = b"".join(iter(lambda: client.recv(1 << 16), b""))
    assert raw.endswith(b"\r\n\r\n" + b"x" * 100 + b"y" * 50)


def test_declared_length_longer_than_source_is_incomplete(kind: str) -> None:
    result = decide(None, headers=[(b"content-length", b"1000")])
    server, client = tcp_pair()
    with server, client, pytest.raises(fastbody.IncompleteTransfer) as raised:
        respond(server, result, [(io.BytesIO(b"z" * 600), {})], kind)
    assert raised.value.sent == 600


def test_piece_longer_than_content_length_is_refused(kind: str) -> None:
    result = decide(10)
    server, client = tcp_pair()
    with server, client, pytest.raises(framing.FramingError):
        respond(server, result, [(b"12345", {}), (b"678901", {})], kind)


def test_count_beyond_the_file_is_refused_before_anything_is_sent(make_file: Any) -> None:
    path = make_file(b"q" * 100)
    fds = fd_count()
    with pytest.raises(ValueError, match="more than the 100 bytes"):
        fastbody.describe(path, count=101)
    with open(path, "rb") as file:
        file.seek(40)
        with pytest.raises(ValueError, match="60 bytes"):
            fastbody.describe(file, count=61)
        assert fastbody.describe(file, count=60).length == 60
    assert fd_count() == fds


def test_describe() -> None:
    server, client = tcp_pair()
    with server, client:
        assert fastbody.describe(server).kind == "socket"
        assert fastbody.describe(server, count=5).length == 5
        assert fastbody.describe(server).length is None
    assert fastbody.describe(io.BytesIO(b"abcdef")).length == 6
    assert fastbody.describe(b"abc").kind == "chunks"
    read_end, write_end = os.pipe()
    with open(read_end, "rb") as pipe:
        assert fastbody.describe(pipe).kind == "pipe"
    os.close(write_end)


@pytest.mark.parametrize("timeout", [1.0, 2.0])
def test_no_progress_timeout_is_the_timeout(make_file: Any, kind: str, timeout: float) -> None:
    """A peer that reads nothing is cut off ``timeout`` seconds (+ at most one second) after
    the last byte reached it, however many partial writes the kernel let through before."""
    path = make_file(os.urandom(64 << 20))
    server, client = tcp_pair()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 << 10)  # full at once, not autotuned
    with server, client:
        watch = ArrivalWatch(client)
        with pytest.raises(fastbody.TransferTimeout) as raised:
            if kind == "blocking":
                fastbody.transfer(server, path, timeout=timeout)
            else:
                server.setblocking(False)
                run_async(fastbody.atransfer(server, path, timeout=timeout), kind)
        idle = watch.idle()
        watch.stop()
    assert raised.value.sent > 0
    # the peer still takes bytes queued before the last write for a while: it sees a shorter idle
    assert timeout - 0.5 <= idle <= timeout + 1.0, idle


def test_a_described_source_is_not_changed_by_sending_it(kind: str) -> None:
    """Under asyncio the engine works on a dup of the source's fd: the caller's description
    keeps the caller's fd, so that sending it again reads the same socket, not a closed number."""
    data = os.urandom(100 << 10)
    source = feed_socket(data, chunk=10 << 10)
    described = fastbody.describe(source)
    fd = described.fd
    server, client = tcp_pair()
    with server, client, source:
        answer = receive_in_thread(client)
        sent = respond(server, decide(None), [(described, {"count": 1000}), (described, {})], kind)
        _, body = answer.result(30)
    assert described.fd == fd
    assert sent == len(data) and sha256(body) == sha256(data)


def test_incomplete_counts_the_whole_body(kind: str) -> None:
    """``sent`` and ``expected`` of a short body count every piece, not just the last one."""
    result = decide(None, headers=[(b"content-length", b"100")])
    server, client = tcp_pair()
    with server, client, pytest.raises(fastbody.IncompleteTransfer) as raised:
        respond(server, result, [(b"a" * 30, {}), (b"b" * 30, {}), (b"", {})], kind)
    assert (raised.value.sent, raised.value.expected) == (60, 100)
    assert "60 of 100" in str(raised.value)


def test_achunks_reads_no_buffered_byte_past_count() -> None:
    """A buffered reader keeps what lies past ``count``, as ``transfer`` leaves it."""
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"0123456789ABCDEF")
    os.close(write_fd)
    with open(read_fd, "rb") as pipe:
        pipe.peek(1)  # all 16 bytes now wait in Python's buffer

        async def first_four() -> bytes:
            return b"".join([chunk async for chunk in fastbody.achunks(fastbody.describe(pipe, count=4))])

        assert run_async(first_four(), "asyncio") == b"0123"
        assert pipe.read() == b"456789ABCDEF"


@pytest.mark.parametrize("source_kind", ["socket", "pipe"])
def test_a_wake_up_without_data_is_no_end_of_a_chunked_body(source_kind: str) -> None:
    """A driver may end a wait before the fd is ready (a level-triggered watch left over from an
    earlier wait, an event loop's spurious wake-up): the source is then no more readable than
    before, and its end must not be taken from a FIONREAD of 0 then (the body would end, framed
    as complete, short). The step is run by hand here: every first wait for the source is
    answered at once, the data comes 50 ms later."""
    import select
    import threading
    import time

    from fastbody.pump import Event, Wait

    data = os.urandom(256 << 10)
    if source_kind == "socket":
        source, writer = socket.socketpair()
        write, finish = writer.sendall, writer.close
    else:
        read_fd, write_fd = os.pipe()
        source = os.fdopen(read_fd, "rb", buffering=0)

        def write(chunk: bytes) -> None:
            os.write(write_fd, chunk)

        def finish() -> None:
            os.close(write_fd)

    def feed() -> None:
        try:
            for start in range(0, len(data), 64 << 10):
                time.sleep(0.05)
                write(data[start : start + (64 << 10)])
        except OSError:
            pass  # the body was ended (wrongly) and the source closed: the asserts say so
        finally:
            finish()

    server, client = tcp_pair()
    with server, client, source:
        answer = receive_in_thread(client)
        feeder = threading.Thread(target=feed)
        feeder.start()
        writer_ = fastbody.ResponseWriter(server, decide(None), head=head_for(decide(None)), timeout=10)
        step = writer_.step(source, last=True, blocking=False)
        server.setblocking(False)
        spurious = 0
        try:
            request = next(step)
            while True:
                assert isinstance(request, Wait)
                if request.event is Event.READ and spurious < 3:  # (on a dup of the source)
                    spurious += 1  # ends at once: nothing is readable yet
                else:
                    mask = select.POLLIN if request.event is Event.READ else select.POLLOUT
                    poller = select.poll()
                    poller.register(request.fd, mask)
                    assert poller.poll(10_000), "no readiness within 10 s"
                request = step.send(None)
        except StopIteration as done:
            sent = done.value
        feeder.join(10)
        _, body = answer.result(30)
    assert spurious == 3
    assert (sent, sha256(body)) == (len(data), sha256(data))
