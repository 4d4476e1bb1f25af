"""The engine against the floor: sender CPU per GiB over loopback, fastbody beside raw syscalls.

    .venv/bin/python benchmarks/engine.py [--size-mib 1024] [--repeat 3] [--small-feed-mib N]

Each sender (or relay) runs alone in a forked child and measures its own CPU with getrusage;
the parent is the receiver (``recv_into``, 1 MiB buffer) and checks the byte count; a relay's
upstream is written by a third process, the feeder. On loopback throughput is bound by the
receiver, so the telling figure is the sender's CPU seconds per GiB (DESIGN.md, "Peer figures").
"""

from __future__ import annotations

import argparse
import fcntl
import multiprocessing
import os
import resource
import socket
import statistics
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import fastbody

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
RUN_TIMEOUT = 120  # seconds any one wait (accept, recv, a child's report or exit) may take
FORK = multiprocessing.get_context("fork")
Address = tuple[str, int]


def raw_sendfile(sock: socket.socket, path: str) -> None:
    with open(path, "rb") as file:
        size, offset = os.fstat(file.fileno()).st_size, 0
        while offset < size:
            sent = os.sendfile(sock.fileno(), file.fileno(), offset, size - offset)
            if sent == 0:
                raise RuntimeError(f"{path} shrank during the run")
            offset += sent


def fastbody_file(sock: socket.socket, path: str) -> None:
    with open(path, "rb") as file:
        fastbody.transfer(sock, file)


def fastbody_relay(client: socket.socket, upstream: socket.socket) -> None:
    fastbody.transfer(client, upstream)


def raw_splice_relay(client: socket.socket, upstream: socket.socket) -> None:
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, MIB)
    try:
        while filled := os.splice(upstream.fileno(), write_fd, MIB):
            while filled:
                filled -= os.splice(read_fd, client.fileno(), filled)
    finally:
        os.close(read_fd)
        os.close(write_fd)


def copy_relay(client: socket.socket, upstream: socket.socket) -> None:
    buffer = memoryview(bytearray(64 * KIB))
    while got := upstream.recv_into(buffer):
        client.sendall(buffer[:got])


@dataclass(frozen=True)
class Scenario:
    key: str
    name: str
    path: str | None  # what a raw row does; None: read from fastbody.stats() in the sender
    send_file: Callable[[socket.socket, str], None] | None = None
    relay: Callable[[socket.socket, socket.socket], None] | None = None
    feed_chunk: int = 0  # the feeder's write size, for relays
    baseline: str | None = None


SCENARIOS = (
    Scenario("a", "raw os.sendfile loop (floor)", "sendfile (raw)", send_file=raw_sendfile),
    Scenario("b", "fastbody.transfer(sock, file)", None, send_file=fastbody_file, baseline="a"),
    Scenario("c", "relay: fastbody.transfer, 64 KiB feed", None, None, fastbody_relay, 64 * KIB, "d"),
    Scenario("d", "relay: recv_into/sendall 64 KiB, 64 KiB feed", "copy (raw)", None, copy_relay, 64 * KIB),
    Scenario(
        "g",
        "relay: raw blocking splice, 1 MiB pipe, 64 KiB feed",
        "splice (raw)",
        None,
        raw_splice_relay,
        64 * KIB,
    ),
    Scenario("e", "relay: fastbody.transfer, 1 KiB feed", None, None, fastbody_relay, KIB, "f"),
    Scenario("f", "relay: recv_into/sendall 64 KiB, 1 KiB feed", "copy (raw)", None, copy_relay, KIB),
)
EXPECTATIONS = (  # (scenario, baseline, highest CPU ratio expected, what it means)
    ("b", "a", 1.10, "fastbody file → socket within 10% of raw sendfile"),
    ("c", "d", 0.50, "splice relay at most half the CPU of copy, 64 KiB feed"),
    ("c", "g", 1.10, "fastbody's splice relay within 10% of raw blocking splice calls"),
    ("e", "f", 1.00, "splice relay no worse than copy, 1 KiB feed"),
)


@dataclass
class Run:
    size: int
    cpu: float  # sender-process user+sys seconds
    seconds: float  # receiver: first byte to EOF
    paths: dict[str, int]  # fastbody.stats() delta in the sender


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def sender_main(
    scenario: Scenario, client_at: Address, upstream: socket.socket | None, path: str, report: Connection
) -> None:
    try:
        source = upstream.accept()[0] if upstream is not None else None
        client = socket.create_connection(client_at)
        before, start = fastbody.stats(), cpu_seconds()
        if scenario.relay is not None and source is not None:
            scenario.relay(client, source)
        elif scenario.send_file is not None:
            scenario.send_file(client, path)
        used, after = cpu_seconds() - start, fastbody.stats()
        client.close()
        report.send((used, {name: after[name] - before[name] for name in after}))
    except BaseException:
        report.send(traceback.format_exc())


def feeder_main(upstream_at: Address, size: int, chunk: int) -> None:
    with socket.create_connection(upstream_at) as sock:
        # Small writes should reach the relay as small segments, as from an upstream app server.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = memoryview(b"\xa5" * chunk)
        for _ in range(size // chunk):
            sock.sendall(data)


def listener() -> socket.socket:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(RUN_TIMEOUT)
    return sock


def receive(client_listener: socket.socket) -> tuple[int, float]:
    """Drain one connection to EOF: (bytes, seconds from the first byte to EOF)."""
    conn = client_listener.accept()[0]
    with conn:  # blocking recv_into, bounded by the kernel rather than by a poll before each call
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", RUN_TIMEOUT, 0))
        buffer = memoryview(bytearray(MIB))
        total = got = conn.recv_into(buffer)
        start = time.perf_counter()
        while got:
            got = conn.recv_into(buffer)
            total += got
        return total, time.perf_counter() - start


def run_once(scenario: Scenario, path: str, size: int) -> Run:
    results, report = FORK.Pipe(duplex=False)
    children: list[BaseProcess] = []
    client_listener = listener()
    upstream = listener() if scenario.relay is not None else None
    try:
        if upstream is not None:
            feeder_args = (upstream.getsockname(), size, scenario.feed_chunk)
            children.append(FORK.Process(target=feeder_main, args=feeder_args, daemon=True))
            children[-1].start()
        sender_args = (scenario, client_listener.getsockname(), upstream, path, report)
        children.append(FORK.Process(target=sender_main, args=sender_args, daemon=True))
        children[-1].start()
        received, seconds = receive(client_listener)
        if not results.poll(RUN_TIMEOUT):
            raise RuntimeError(f"{scenario.key}: the sender did not report")
        result = results.recv()
        if isinstance(result, str):
            raise RuntimeError(f"{scenario.key}: the sender failed\n{result}")
        if received != size:
            raise RuntimeError(f"{scenario.key}: received {received} bytes, expected {size}")
        for child in children:
            child.join(RUN_TIMEOUT)
        cpu, paths = result
        return Run(size, cpu, seconds, paths)
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
            child.join()
        for sock in (client_listener, upstream):
            if sock is not None:
                sock.close()
        results.close()
        report.close()


def make_warm_file(size: int) -> str:
    fd, path = tempfile.mkstemp(prefix="fastbody-engine-", suffix=".bin", dir="/tmp")
    block = os.urandom(MIB)
    for offset in range(0, size, MIB):
        os.pwrite(fd, block, offset)
    for offset in range(0, size, MIB):  # read once so every run is served from the page cache
        os.pread(fd, MIB, offset)
    os.close(fd)
    return path


def describe_paths(scenario: Scenario, runs: list[Run]) -> str:
    if scenario.path is not None:
        return scenario.path
    totals = {name: sum(run.paths[name] for run in runs) for name in runs[0].paths}
    moved = sum(totals.values()) or 1
    return " + ".join(f"{name} {count / moved:.0%}" for name, count in totals.items() if count)


def cpu_per_gib(run: Run) -> float:
    return run.cpu * GIB / run.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="bytes per run (default 1024 MiB)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario; medians are shown")
    parser.add_argument("--small-feed-mib", type=int, help="MiB per 1 KiB-feed run (default: --size-mib)")
    args = parser.parse_args()
    size = args.size_mib * MIB
    small = min(args.small_feed_mib or args.size_mib, args.size_mib) * MIB
    sizes = {s.key: small if s.feed_chunk == KIB else size for s in SCENARIOS}
    runs: dict[str, list[Run]] = {s.key: [] for s in SCENARIOS}
    path = make_warm_file(size)
    try:
        for repeat in range(args.repeat):  # interleaved, so slow drift hits every scenario alike
            for scenario in SCENARIOS:
                run = run_once(scenario, path, sizes[scenario.key])
                runs[scenario.key].append(run)
                note = f"[{repeat + 1}/{args.repeat}] {scenario.key}: {cpu_per_gib(run):.3f} s/GiB"
                print(note, file=sys.stderr, flush=True)
    finally:
        os.unlink(path)

    cpu = {key: statistics.median(cpu_per_gib(run) for run in key_runs) for key, key_runs in runs.items()}
    print(f"\n{args.size_mib} MiB from page cache over 127.0.0.1, medians of {args.repeat} runs; CPU is the")
    print("sender's (relay's) own user+sys, normalised per GiB.\n")
    print("| scenario | path | MiB sent | throughput MB/s | CPU s/GiB (min-max) | ratio vs baseline |")
    print("|---|---|---|---|---|---|")
    for s in SCENARIOS:
        key_runs = runs[s.key]
        rate = statistics.median(run.size / run.seconds / 1e6 for run in key_runs)
        spread = [cpu_per_gib(run) for run in key_runs]
        versus = f"{cpu[s.key] / cpu[s.baseline]:.2f} vs {s.baseline}" if s.baseline else "baseline"
        cells = [f"{s.key}. {s.name}", describe_paths(s, key_runs), str(sizes[s.key] // MIB), f"{rate:.0f}"]
        cells += [f"{cpu[s.key]:.3f} ({min(spread):.3f}-{max(spread):.3f})", versus]
        print("| " + " | ".join(cells) + " |")
    print()
    for key, baseline, limit, meaning in EXPECTATIONS:
        ratio = cpu[key] / cpu[baseline]
        verdict = "held" if ratio <= limit else "DID NOT HOLD"
        print(f"- {key} vs {baseline}: {ratio:.2f} (expected ≤ {limit:.2f}: {meaning}) — {verdict}")


if __name__ == "__main__":
    main()
