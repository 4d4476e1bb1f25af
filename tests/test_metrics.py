"""Metrics: the engine's subscription (each counted batch, each response's end and how it ended)
and fastbody.integrations.metrics on top of it, across real gunicorn and uvicorn workers in
prometheus_client's multiprocess mode, scraped from ``serve()`` in a process of its own."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import Receiver, feed_socket, tcp_pair

import fastbody
from fastbody import counters, framing
from fastbody.response import outcome_of

httpx = pytest.importorskip("httpx")
pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from servers import Server, fetch, free_port, launch, stop, wait_until  # noqa: E402

APPS = Path(__file__).resolve().parent / "apps"
HEAD = b"HTTP/1.1 200 OK\r\n\r\n"
MIB = 1 << 20


class Heard:
    """A listener that keeps what it hears."""

    def __init__(self) -> None:
        self.bytes: dict[str, int] = {}
        self.responses: list[tuple[str, str]] = []

    def moved(self, path: str, count: int) -> None:
        self.bytes[path] = self.bytes.get(path, 0) + count

    def ended(self, path: str, outcome: str) -> None:
        self.responses.append((path, outcome))


@pytest.fixture
def heard() -> Iterator[Heard]:
    listener = Heard()
    unsubscribe = counters.subscribe(listener)
    yield listener
    unsubscribe()


# -- classification ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "socket_source", "outcome"),
    [
        (fastbody.PeerClosedError.make(errno.EPIPE, "broken pipe", 10), False, counters.CLIENT_GONE),
        (fastbody.PeerClosedError.make(errno.ECONNRESET, "reset", 10), True, counters.CLIENT_GONE),
        (asyncio.CancelledError(), False, counters.CLIENT_GONE),
        (GeneratorExit(), False, counters.CLIENT_GONE),
        (fastbody.TransferTimeout.make(None, "no progress", 10), False, counters.TIMEOUT),
        (fastbody.IncompleteTransfer.short(10, 20), False, counters.SHORT_SOURCE),
        (fastbody.IncompleteTransfer.short(10, 20), True, counters.UPSTREAM),
        (fastbody.TransferError.make(errno.EIO, "i/o error", 10), False, counters.ERROR),
        (framing.FramingError("body longer than its Content-Length"), False, counters.ERROR),
        (ValueError("an app's iterator failed"), False, counters.ERROR),
        (KeyboardInterrupt(), False, counters.ERROR),
    ],
)
def test_outcome_of(error: BaseException, socket_source: bool, outcome: str) -> None:
    assert outcome_of(error, socket_source=socket_source) == outcome


def test_main_path() -> None:
    assert counters.main_path({"sendfile": 10, "splice": 0, "copy": 3}) == "sendfile"
    assert counters.main_path({"sendfile": 5, "splice": 5, "copy": 6}) == "copy"
    assert counters.main_path({"sendfile": 5, "splice": 5, "copy": 0}) == "sendfile"  # a tie: the first
    assert counters.main_path(dict.fromkeys(counters.PATHS, 0)) == counters.NONE


# -- the subscription -------------------------------------------------------------------------


def test_subscribe_and_unsubscribe() -> None:
    listener = Heard()
    unsubscribe = counters.subscribe(listener)
    counters.subscribe(listener)  # once is enough
    assert counters.listening()
    counters.add(counters.COPY, 7)
    counters.response_ended({"copy": 7}, counters.COMPLETE)
    unsubscribe()
    counters.add(counters.COPY, 5)
    assert listener.bytes == {"copy": 7}
    assert listener.responses == [("copy", "complete")]


def test_a_raising_listener_is_dropped_and_the_counting_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Heard):
        def moved(self, path: str, count: int) -> None:
            raise RuntimeError("broken listener")

    broken, good = Broken(), Heard()
    counters.subscribe(broken)
    counters.subscribe(good)
    try:
        before = counters.stats()["copy"]
        counters.add(counters.COPY, 3)
        counters.add(counters.COPY, 4)
        assert counters.stats()["copy"] == before + 7
        assert good.bytes == {"copy": 7}
        assert "broken listener" in caplog.text
    finally:
        counters.unsubscribe(broken)
        counters.unsubscribe(good)


def test_unobserved_responses_report_no_end(tmp_path: Path) -> None:
    assert not counters.listening()
    path = tmp_path / "body"
    path.write_bytes(b"x" * 100_000)
    server, client = tcp_pair()
    with server, client, open(path, "rb") as body:
        receiver = Receiver(client)
        writer = fastbody.ResponseWriter(server, framing.Framing(framing.Delimit.LENGTH, 100_000), head=HEAD)
        writer.send(body, last=True)
        assert not writer._observed  # nobody hears its end
        assert writer.paths == {"sendfile": 100_000}  # its own tally is kept all the same
        server.close()
        assert receiver.result()[0] == len(HEAD) + 100_000


# -- how a ResponseWriter reports its response ----------------------------------------------------


def send_file(
    tmp_path: Path, size: int, result: framing.Framing | framing.BodyWriter, **options: object
) -> int:
    path = tmp_path / "body"
    path.write_bytes(os.urandom(size))
    server, client = tcp_pair()
    with server, client, open(path, "rb") as body:
        receiver = Receiver(client)
        writer = fastbody.ResponseWriter(server, result, head=HEAD)
        writer.send(body, **options)  # type: ignore[arg-type]
        server.close()
        return receiver.result()[0]


def test_a_whole_file_is_complete_by_sendfile(tmp_path: Path, heard: Heard) -> None:
    send_file(tmp_path, 4 * MIB, framing.Framing(framing.Delimit.LENGTH, 4 * MIB), last=True)
    assert heard.responses == [("sendfile", "complete")]
    assert heard.bytes.get("sendfile", 0) + heard.bytes.get("copy", 0) == 4 * MIB


def test_a_filled_content_length_ends_the_response_without_last(tmp_path: Path, heard: Heard) -> None:
    """uvicorn writes the body's end itself: a piece that fills the Content-Length ends it."""
    send_file(tmp_path, 2 * MIB, framing.LengthWriter(2 * MIB))
    assert heard.responses == [("sendfile", "complete")]


def test_a_small_body_is_complete_by_copy(tmp_path: Path, heard: Heard) -> None:
    send_file(tmp_path, 100, framing.Framing(framing.Delimit.LENGTH, 100), last=True)
    assert heard.responses == [("copy", "complete")]


def test_a_chunked_body_ends_at_its_end_only(heard: Heard) -> None:
    server, client = tcp_pair()
    with server, client:
        receiver = Receiver(client)
        writer = fastbody.ResponseWriter(server, framing.Framing(framing.Delimit.CHUNKED), head=HEAD)
        writer.send(b"a" * 10)
        writer.send(b"b" * 10)
        assert heard.responses == []
        writer.end()
        writer_sent = writer.sent
        server.close()
        receiver.result()
    assert writer_sent == 20
    assert heard.responses == [("copy", "complete")]


def test_a_head_only_response_has_no_path(heard: Heard) -> None:
    server, client = tcp_pair()
    with server, client:
        writer = fastbody.ResponseWriter(server, framing.Framing(framing.Delimit.NONE), head=HEAD)
        writer.end()
    assert heard.responses == [("none", "complete")]


def test_a_client_that_goes_away_is_client_gone(tmp_path: Path, heard: Heard) -> None:
    path = tmp_path / "big"
    path.write_bytes(os.urandom(64 * MIB))
    server, client = tcp_pair()
    with server, open(path, "rb") as body:
        Receiver(client, close_after=MIB)
        writer = fastbody.ResponseWriter(server, framing.Framing(framing.Delimit.LENGTH, 64 * MIB), head=HEAD)
        with pytest.raises(fastbody.PeerClosedError):
            writer.send(body, last=True)
    assert heard.responses == [("sendfile", "client_gone")]


def test_a_stalled_client_is_timeout(tmp_path: Path, heard: Heard) -> None:
    path = tmp_path / "big"
    path.write_bytes(os.urandom(32 * MIB))
    server, client = tcp_pair()
    with server, client, open(path, "rb") as body:
        writer = fastbody.ResponseWriter(
            server, framing.Framing(framing.Delimit.LENGTH, 32 * MIB), head=HEAD, timeout=0.5
        )
        with pytest.raises(fastbody.TransferTimeout):
            writer.send(body, last=True)
    assert heard.responses == [("sendfile", "timeout")]


def test_a_file_shorter_than_its_length_is_short_source(tmp_path: Path, heard: Heard) -> None:
    path = tmp_path / "short"
    path.write_bytes(b"x" * 100_000)
    server, client = tcp_pair()
    with server, client, open(path, "rb") as body:
        receiver = Receiver(client)
        writer = fastbody.ResponseWriter(server, framing.Framing(framing.Delimit.LENGTH, 200_000), head=HEAD)
        with pytest.raises(fastbody.IncompleteTransfer):
            writer.send(body, count=200_000, last=True)
        server.close()
        receiver.result()
    assert heard.responses == [("sendfile", "short_source")]


def test_a_socket_source_that_ends_early_is_upstream(heard: Heard) -> None:
    source = feed_socket(b"u" * 300_000)
    server, client = tcp_pair()
    with server, client, source:
        receiver = Receiver(client)
        writer = fastbody.ResponseWriter(server, framing.Framing(framing.Delimit.LENGTH, MIB), head=HEAD)
        with pytest.raises(fastbody.IncompleteTransfer):
            writer.send(source, count=MIB, last=True)
        server.close()
        receiver.result()
    assert heard.responses == [("splice", "upstream")]


def test_an_integration_that_reports_itself(heard: Heard) -> None:
    """``reports=False``: the writer tells nobody; the integration (a response spanning writers,
    an upstream it can blame: gunicorn's Pieces, uvicorn's messages) tells once, its way."""
    from fastbody.integrations.failures import SourceFailed, outcome

    server, client = tcp_pair()
    with server, client:
        receiver = Receiver(client)
        writer = fastbody.ResponseWriter(
            server, framing.Framing(framing.Delimit.CHUNKED), head=HEAD, reports=False
        )
        writer.send(b"a" * 1000)
        writer.end()
        assert heard.responses == []
        counters.response_ended(writer.paths, outcome(SourceFailed.of("reset", 1000, None)))
        server.close()
        receiver.result()
    assert heard.responses == [("copy", "upstream")]
    assert outcome(None) == "complete"
    assert outcome(fastbody.PeerClosedError.make(None, "gone", 0)) == "client_gone"


def test_an_app_iterator_that_raises_is_error(heard: Heard) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"a" * 1000
        raise ValueError("the app failed")

    server, client = tcp_pair()
    with server, client:
        receiver = Receiver(client)
        writer = fastbody.ResponseWriter(server, framing.Framing(framing.Delimit.CHUNKED), head=HEAD)
        with pytest.raises(ValueError):
            writer.send(chunks(), last=True)
        server.close()
        receiver.result()
    assert heard.responses == [("copy", "error")]


def test_a_request_body_sent_upstream_is_no_response(heard: Heard) -> None:
    server, client = tcp_pair()
    with server, client:
        request = b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n"
        writer = fastbody.ResponseWriter(server, framing.Framing(framing.Delimit.LENGTH, 5), head=request)
        writer.send(b"hello", last=True)
    assert heard.responses == []
    assert heard.bytes == {"copy": 5}  # its bytes count all the same


def test_asyncio_cancellation_is_client_gone(tmp_path: Path, heard: Heard) -> None:
    path = tmp_path / "big"
    path.write_bytes(os.urandom(32 * MIB))
    server, client = tcp_pair()

    async def cancelled() -> None:
        writer = fastbody.ResponseWriter(server, framing.Framing(framing.Delimit.LENGTH, 32 * MIB), head=HEAD)
        task = asyncio.ensure_future(writer.asend(str(path), last=True))
        await asyncio.sleep(0.2)  # nobody reads: it waits for the socket
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with server, client:
        server.setblocking(False)
        asyncio.run(cancelled())
    assert heard.responses == [("sendfile", "client_gone")]


# -- the prometheus counters, in this process -------------------------------------------------


def test_install_feeds_the_counters_once(tmp_path: Path) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        pytest.skip("this test process runs in prometheus_client's multiprocess mode")
    from fastbody.integrations import metrics

    def value(name: str, **labels: str) -> float:
        found = metrics.registry().get_sample_value(name, labels)
        return found or 0.0

    metrics.install()
    metrics.install()
    try:
        before = value("fastbody_body_bytes_total", path="sendfile")
        completed = value("fastbody_responses_total", path="sendfile", outcome="complete")
        send_file(tmp_path, 4 * MIB, framing.Framing(framing.Delimit.LENGTH, 4 * MIB), last=True)
        moved = value("fastbody_body_bytes_total", path="sendfile") - before
        assert 3 * MIB < moved <= 4 * MIB  # (a first read may go by copy)
        assert value("fastbody_responses_total", path="sendfile", outcome="complete") == completed + 1
    finally:
        metrics.uninstall()
    assert not counters.listening()


# -- real servers, several workers --------------------------------------------------------------


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of a /metrics page, by name and labels."""
    text = httpx.get(url, timeout=30).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def body_bytes(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    return sum(value for (name, _), value in samples.items() if name == "fastbody_body_bytes_total")


def responses(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], outcome: str) -> float:
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "fastbody_responses_total" and ("outcome", outcome) in labels
    )


@pytest.fixture
def multiproc_dir(tmp_path: Path) -> str:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    return str(directory)


@pytest.fixture
def data_file(tmp_path: Path) -> tuple[str, int]:
    path = tmp_path / "body-8m.bin"
    path.write_bytes(os.urandom(8 * MIB))
    return str(path), 8 * MIB


@pytest.fixture
def metrics_server(multiproc_dir: str, tmp_path: Path) -> Iterator[str]:
    """``metrics.serve(port)`` in a process of its own (as ``fastbody serve``'s master would)."""
    port = free_port()
    code = "import sys, time\nfrom fastbody.integrations import metrics\nmetrics.serve(int(sys.argv[1]))\n"
    code += "while True:\n    time.sleep(60)\n"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": multiproc_dir}
    with open(tmp_path / "metrics-server.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-c", code, str(port)], env=env, stdout=log, stderr=log)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_until(lambda: _answers(url), 30, "metrics server answers")
        yield url
    finally:
        process.terminate()
        process.wait(15)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def start_gunicorn(tmp_path: Path, workers: int, env: dict[str, str]) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-b", f"127.0.0.1:{port}"]
    command += ["-w", str(workers), "-k", "egg:fastbody#sync", "--chdir", str(APPS), "metrics_app:wsgi"]
    return launch(command, port, tmp_path / f"gunicorn-{port}.log", env=env)


def start_uvicorn(tmp_path: Path, workers: int, env: dict[str, str]) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "metrics_app:asgi", "--app-dir", str(APPS)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    command += ["--http", "fastbody.integrations.uvicorn:AutoProtocol", "--log-level", "warning"]
    return launch(command, port, tmp_path / f"uvicorn-{port}.log", env=env)


def load(server: Server, path: str, size: int) -> tuple[int, set[str]]:
    """Fetch the file over fresh connections, four at a time, until both workers served some
    (at least 8 times); the count fetched and the pids that served."""
    pids: set[str] = set()
    served = 0

    def one() -> str:
        fetched = fetch(f"{server.url}/file?path={path}")
        assert fetched.status == 200 and fetched.size == size
        return str(fetched.headers["x-pid"])

    with ThreadPoolExecutor(4) as pool:
        for _ in range(10):
            pids.update(pool.map(lambda _: one(), range(4)))
            served += 4
            if served >= 8 and len(pids) >= 2:
                break
    return served, pids


def leave_mid_body(server: Server, path: str) -> None:
    """Ask for the file, read 1 MiB of it, reset the connection."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(f"GET /file?path={path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        received = 0
        while received < MIB:
            received += len(sock.recv(64 << 10))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


@pytest.mark.parametrize("start", [start_gunicorn, start_uvicorn], ids=["gunicorn", "uvicorn"])
def test_two_workers_add_up(
    start: object, tmp_path: Path, multiproc_dir: str, metrics_server: str, data_file: tuple[str, int]
) -> None:
    path, size = data_file
    server = start(tmp_path, 2, {"PROMETHEUS_MULTIPROC_DIR": multiproc_dir})  # type: ignore[operator]
    try:
        served, pids = load(server, path, size)
        assert len(pids) == 2, f"one worker served every request: {pids}"
        # A worker counts a response once its last byte is sent, which may be just after the
        # client has it all: wait for the count to settle.
        wait_until(lambda: responses(scrape(metrics_server), "complete") >= served, 10, "responses counted")
        samples = scrape(metrics_server)
        assert body_bytes(samples) == served * size
        assert responses(samples, "complete") == served
        assert samples["fastbody_responses_total", (("outcome", "complete"), ("path", "sendfile"))] == served
        assert len(list(Path(multiproc_dir).glob("counter_*.db"))) >= 2  # one file per worker (and ours)

        leave_mid_body(server, path)
        wait_until(lambda: responses(scrape(metrics_server), "client_gone") == 1, 20, "client_gone counted")
        samples = scrape(metrics_server)
        assert served * size < body_bytes(samples) < (served + 1) * size
        assert responses(samples, "complete") == served
    finally:
        stop(server)


def test_one_process_without_multiproc_dir(tmp_path: Path, data_file: tuple[str, int]) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        pytest.skip("this test process runs in prometheus_client's multiprocess mode")
    path, size = data_file
    server = start_gunicorn(tmp_path, 1, {})
    try:
        for _ in range(3):
            assert fetch(f"{server.url}/file?path={path}").size == size
        url = f"{server.url}/metrics"
        wait_until(lambda: responses(scrape(url), "complete") >= 3, 10, "responses counted")
        samples = scrape(url)
        assert body_bytes(samples) == 3 * size
        assert samples["fastbody_responses_total", (("outcome", "complete"), ("path", "sendfile"))] == 3
        assert ("process_cpu_seconds_total", ()) in samples  # prometheus_client's default registry
    finally:
        stop(server)


def test_threads_share_the_counts(tmp_path: Path) -> None:
    """The listener runs on every transfer's thread: counts from threads add up."""
    listener = Heard()
    unsubscribe = counters.subscribe(listener)
    try:

        def one() -> None:
            server, client = tcp_pair()
            with server, client:
                receiver = Receiver(client)
                writer = fastbody.ResponseWriter(
                    server, framing.Framing(framing.Delimit.LENGTH, 50_000), head=HEAD
                )
                writer.send(b"z" * 50_000, last=True)
                server.close()
                receiver.result()

        threads = [threading.Thread(target=one) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        time.sleep(0)
        assert listener.bytes == {"copy": 8 * 50_000}
        assert listener.responses == [("copy", "complete")] * 8
    finally:
        unsubscribe()
