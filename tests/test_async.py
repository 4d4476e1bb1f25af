"""atransfer's own promises: it never blocks the loop, works on a transport's socket,
cleans up when cancelled; and TLS sockets take the copy path."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from conftest import Receiver, StatsDelta, close_fed, feed_socket, run_async, sha256, tcp_pair

import fastbody
from fastbody.pipes import default_pool

MiB = 1 << 20
LOOPS = ["asyncio", "uvloop"]


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_loop_stays_responsive_while_a_slow_client_reads(loop_kind: str, blob_32m: bytes) -> None:
    server, client = tcp_pair()
    server.setblocking(False)
    ticks: list[float] = []

    def slow_read() -> None:
        while client.recv(256 << 10):
            time.sleep(0.01)

    reader = threading.Thread(target=slow_read)
    reader.start()

    async def main() -> int:
        async def tick() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        ticker = asyncio.ensure_future(tick())
        try:
            return await fastbody.atransfer(server, feed_socket(blob_32m))
        finally:
            ticker.cancel()

    started = time.monotonic()
    assert run_async(main(), loop_kind) == len(blob_32m)
    elapsed = time.monotonic() - started
    server.close()
    reader.join(30)
    client.close()
    gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
    assert elapsed > 0.3 and len(ticks) > 10
    assert max(gaps) < 0.5, f"the loop was blocked for {max(gaps):.3f} s"


async def served_once(send: Callable[[asyncio.Transport], Awaitable[int]]) -> tuple[int, str]:
    """One connection to a server on this loop whose protocol runs ``send(transport)`` and then
    closes the transport: what ``send`` returned, and the sha256 of all the client received."""
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Serve(asyncio.Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self.sending = asyncio.ensure_future(self.send(transport))

        async def send(self, transport: asyncio.Transport) -> None:
            try:
                done.set_result(await send(transport))
            except BaseException as error:  # (the test sees it, not a client waiting for the end)
                done.set_exception(error)
            finally:
                transport.close()

    server = await asyncio.get_running_loop().create_server(Serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = await reader.read(-1)
    writer.close()
    server.close()
    return await done, sha256(received)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_transfer_on_a_transport_socket(loop_kind: str, blob_32m: bytes, tmp_path: Path) -> None:
    """The case of an ASGI server: the socket belongs to a transport; atransfer watches a dup."""
    path = tmp_path / "body"
    path.write_bytes(blob_32m)
    moved = StatsDelta()

    async def send(transport: asyncio.Transport) -> int:
        transport.pause_reading()
        transport.write(b"head:")  # bytes the transport buffered go out first
        while transport.get_write_buffer_size():
            await asyncio.sleep(0.001)
        return await fastbody.atransfer(transport.get_extra_info("socket"), str(path))

    assert run_async(served_once(send), loop_kind) == (len(blob_32m), sha256(b"head:" + blob_32m))
    assert moved() == {"sendfile": len(blob_32m)}


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_small_body_on_a_transport_socket_goes_in_one_call(
    loop_kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small response body (a 1 KiB file under a Content-Length) on a transport's socket
    (asyncio's TransportSocket, uvloop's PseudoSocket: no socket objects, but non-blocking)
    goes in one ``writev`` before any set-up: no dup of the transport's fd, no socket object."""
    body = os.urandom(1024)
    path = tmp_path / "small"
    path.write_bytes(body)
    calls: list[str] = []
    for name in ("own_handle", "dup", "write_parts"):  # spies: each call still goes through
        real = getattr(fastbody.syscalls, name)
        spy = functools.partial(_spied, real, name, calls)
        monkeypatch.setattr(fastbody.syscalls, name, spy)
    framing = fastbody.framing.for_response(
        http11=True, method="GET", status=200, declared=fastbody.framing.Declared(None), known=len(body)
    )

    async def send(transport: asyncio.Transport) -> int:
        writer = fastbody.ResponseWriter(transport.get_extra_info("socket"), framing)
        with open(path, "rb") as file:
            return await writer.asend(file, last=True)

    assert run_async(served_once(send), loop_kind) == (len(body), sha256(body))
    assert calls == ["write_parts"]


def _spied(real: Callable[..., object], name: str, calls: list[str], *args: object) -> object:
    calls.append(name)
    return real(*args)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_cancelled_transfer_releases_everything(loop_kind: str, blob_32m: bytes) -> None:
    default_pool.clear()
    before = set(os.listdir("/proc/self/fd"))
    server, client = tcp_pair()
    source = feed_socket(blob_32m)
    source_was_blocking = os.get_blocking(source.fileno())
    receiver = Receiver(client, stop_after=MiB)  # stalls the transfer mid-body
    server.setblocking(False)

    async def main() -> None:
        task = asyncio.ensure_future(fastbody.atransfer(server, source))
        await asyncio.sleep(0.3)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run_async(main(), loop_kind)
    assert default_pool.in_use() == 0
    assert os.get_blocking(source.fileno()) == source_was_blocking
    server.close()
    client.close()
    receiver.thread.join(10)
    close_fed(source)
    default_pool.clear()
    assert set(os.listdir("/proc/self/fd")) == before


# -- TLS: the bytes are encrypted in Python, so both ends of a TLS transfer copy ----------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not installed (Debian package openssl)")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1"),
            "-keyout",
            key,
            "-out",
            cert,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def tls_pair(certificate: tuple[str, str]) -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(*certificate)
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.load_verify_locations(certificate[0])
    client_context.check_hostname = False
    plain_server, plain_client = tcp_pair()
    wrapped: dict[str, ssl.SSLSocket] = {}
    handshake = threading.Thread(
        target=lambda: wrapped.setdefault("client", client_context.wrap_socket(plain_client))
    )
    handshake.start()
    server = server_context.wrap_socket(plain_server, server_side=True)
    handshake.join(10)
    return server, wrapped["client"]


@pytest.mark.parametrize("kind", ["file", "socket"])
def test_tls_destination_copies(
    certificate: tuple[str, str], blob_32m: bytes, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "body"
    path.write_bytes(blob_32m)
    server, client = tls_pair(certificate)
    server.settimeout(7.5)
    moved = StatsDelta()
    receiver = Receiver(client)  # type: ignore[arg-type]
    source: object = str(path) if kind == "file" else feed_socket(blob_32m)
    assert fastbody.transfer(server, source) == len(blob_32m)
    assert server.gettimeout() == 7.5  # the caller's timeout is put back
    server.close()
    assert receiver.result() == (len(blob_32m), sha256(blob_32m))
    assert moved() == {"copy": len(blob_32m)}
    client.close()
    if isinstance(source, socket.socket):
        close_fed(source)


def test_tls_source_copies(certificate: tuple[str, str], blob_32m: bytes) -> None:
    source, writer = tls_pair(certificate)
    # FIN, not close(): the writer never reads its TLS 1.3 session tickets, and closing a socket
    # with unread data sends a reset that makes the reader's kernel drop what it has not read.
    threading.Thread(target=lambda: (writer.sendall(blob_32m), writer.shutdown(socket.SHUT_WR))).start()
    server, client = tcp_pair()
    moved = StatsDelta()
    receiver = Receiver(client)
    assert fastbody.transfer(server, source, count=len(blob_32m)) == len(blob_32m)
    server.close()
    assert receiver.result() == (len(blob_32m), sha256(blob_32m))
    assert moved() == {"copy": len(blob_32m)}
    source.close()
    writer.close()
    client.close()


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_closed_and_reused_fd_number_gets_no_bytes(loop_kind: str, blob_32m: bytes, tmp_path: Path) -> None:
    """A transport closed mid-transfer frees its fd number for the next connection: the
    transfer goes on with its own dup of the old connection, never into the new one."""
    path = tmp_path / "body"
    path.write_bytes(blob_32m)
    server, client = tcp_pair()
    server.setblocking(False)
    receiver = Receiver(client, stop_after=MiB)
    stray = {"bytes": 0}

    async def main() -> int:
        task = asyncio.ensure_future(fastbody.atransfer(server, str(path)))
        await asyncio.sleep(0.2)  # the transfer now waits: the client stopped reading
        receiver.thread.join(10)
        number = server.fileno()
        server.close()  # as transport.abort() would
        other, other_peer = socket.socketpair()
        try:
            assert other.fileno() == number  # the next connection got the same number
            other_peer.setblocking(False)
            drain = Receiver(client)  # the old client reads on: the transfer can finish
            sent = await asyncio.wait_for(task, 30)
            await asyncio.sleep(0.1)
            with contextlib.suppress(BlockingIOError):
                stray["bytes"] = len(other_peer.recv(1 << 20))
            drain.thread.join(10)
            return sent
        finally:
            other.close()
            other_peer.close()

    sent = run_async(main(), loop_kind)
    assert sent == len(blob_32m)
    assert stray["bytes"] == 0
    client.close()


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_loop_breathes_while_a_fast_reader_takes_a_big_file(loop_kind: str, tmp_path: Path) -> None:
    """sendfile to a fast reader never gets EAGAIN; the pump still lets other tasks run."""
    path = tmp_path / "body"
    path.write_bytes(os.urandom(MiB) * 256)
    server, client = tcp_pair()
    server.setblocking(False)
    receiver = Receiver(client)
    ticks: list[float] = []

    async def main() -> int:
        async def tick() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0)

        ticker = asyncio.ensure_future(tick())
        try:
            return await fastbody.atransfer(server, str(path))
        finally:
            ticker.cancel()

    assert run_async(main(), loop_kind) == 256 * MiB
    server.close()
    receiver.result()
    client.close()
    gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
    assert len(ticks) >= 256 * MiB // (16 * MiB) - 1, "the ticker never got to run meanwhile"
    assert max(gaps) < 0.25, f"the loop was blocked for {max(gaps):.3f} s"
