"""Where sendfile and splice start to pay off: sender CPU per transfer of small bodies, kernel vs copy.

    .venv/bin/python benchmarks/small_bodies.py [--seconds 0.25] [--repeat 20] [--no-pin]

The measurement behind ``fastbody.plan.SMALL_BODY``. Per body size, as many transfers as fit in
``--seconds`` go over ONE kept-open loopback connection (TCP_NODELAY) that a child drains; this
process sends, alone on CPU 0 unless ``--no-pin``, and measures its own CPU (getrusage). The paths
are called directly, not through ``fastbody.transfer`` (which applies SMALL_BODY itself):

- file → socket: ``os.sendfile`` vs ``os.preadv`` into a reused 1 MiB buffer + ``sendall``;
- socket → socket: ``splice`` through a 1 MiB pipe vs ``recv_into`` a reused 1 MiB buffer +
  ``sendall``; the upstream socket is kept full by a child process looping ``os.sendfile``.
All sockets are blocking (bounded by SO_SNDTIMEO/SO_RCVTIMEO): a copy is one read and one send.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import select
import socket
import statistics
import struct
import tempfile
import time
from collections.abc import Callable

from fastbody import plan, syscalls

KIB, MIB = 1 << 10, 1 << 20
SIZES = tuple(kib * KIB for kib in (1, 4, 16, 32, 64, 128, 256))
FILE_SIZE = 4 * MIB  # the bodies come from its start; the feeder loops over all of it
TIMEOUT = 30  # seconds any one socket call or wait may block
FORK = multiprocessing.get_context("fork")


def bounded(sock: socket.socket) -> socket.socket:
    """Blocking, but a call that makes no progress for TIMEOUT seconds fails (EAGAIN)."""
    timeval = struct.pack("ll", TIMEOUT, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    return sock


def wait(fd: int, events: int) -> None:
    poller = select.poll()  # only after EAGAIN: blocking sockets rarely get here
    poller.register(fd, events)
    if not poller.poll(TIMEOUT * 1000):
        raise TimeoutError(f"fd {fd} not ready within {TIMEOUT} s")


def pin(cpus: set[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)


def drain_main(at: tuple[str, int], cpus: set[int] | None) -> None:
    """The client: read to EOF."""
    pin(cpus)
    with bounded(socket.create_connection(at)) as sock:
        buffer = memoryview(bytearray(MIB))
        while sock.recv_into(buffer):
            pass


def feed_main(at: tuple[str, int], path: str, cpus: set[int] | None) -> None:
    """The upstream: keep the relay's socket full; unbounded, it ends when the relay closes."""
    pin(cpus)
    with socket.create_connection(at) as sock, open(path, "rb") as file:
        try:
            while True:
                os.sendfile(sock.fileno(), file.fileno(), 0, FILE_SIZE)
        except (BrokenPipeError, ConnectionResetError):
            pass


class Sender:
    """One kept-open client connection, one upstream connection, one file, one pipe, one buffer."""

    def __init__(self, client: socket.socket, upstream: socket.socket, file_fd: int) -> None:
        self.client, self.upstream, self.file_fd = client, upstream, file_fd
        self.buffer = memoryview(bytearray(MIB))
        self.pipe_read, self.pipe_write, pipe_size = syscalls.new_pipe(MIB)
        if pipe_size < SIZES[-1]:
            raise RuntimeError(f"got a {pipe_size}-byte pipe: the per-user pipe budget is spent")

    def file_sendfile(self, size: int) -> None:
        offset = 0
        while offset < size:
            sent = syscalls.sendfile(self.client.fileno(), self.file_fd, offset, size - offset)
            if sent is None:
                wait(self.client.fileno(), select.POLLOUT)
            elif sent == 0:
                raise EOFError("the file shrank")
            else:
                offset += sent

    def file_copy(self, size: int) -> None:
        got = os.preadv(self.file_fd, [self.buffer[:size]], 0)  # page cache: never short here
        self.client.sendall(self.buffer[:got])

    def socket_splice(self, size: int) -> None:
        left = size
        while left:  # fill the empty pipe, then drain it completely, as fastbody's pump does
            filled = syscalls.splice(self.upstream.fileno(), self.pipe_write, left)
            if filled is None:
                wait(self.upstream.fileno(), select.POLLIN)
                continue
            if filled == 0:
                raise EOFError("the upstream closed")
            left -= filled
            while filled:
                drained = syscalls.splice(self.pipe_read, self.client.fileno(), filled)
                if drained is None:
                    wait(self.client.fileno(), select.POLLOUT)
                else:
                    filled -= drained

    def socket_copy(self, size: int) -> None:
        left = size
        while left:
            got = self.upstream.recv_into(self.buffer[:left])
            if got == 0:
                raise EOFError("the upstream closed")
            self.client.sendall(self.buffer[:got])
            left -= got

    def close(self) -> None:
        syscalls.close(self.pipe_read)
        syscalls.close(self.pipe_write)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_transfer_us(move: Callable[[int], None], size: int, seconds: float) -> float:
    """This process's CPU microseconds per transfer of ``size`` bytes, over ``seconds`` of transfers."""
    for _ in range(16):  # warm up: caches, socket buffers, the pipe's pages
        move(size)
    count, start, deadline = 0, cpu_seconds(), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(32):
            move(size)
        count += 32
    return (cpu_seconds() - start) / count * 1e6


def verdict(kernel: str, ratios: dict[int, float]) -> str:
    """The smallest size at which the kernel path is no slower than copy, and whether that lasts."""
    first = next((size for size in SIZES if ratios[size] <= 1.0), None)
    if first is None:
        return f"{kernel}: slower than copy at every size up to {SIZES[-1] // KIB} KiB"
    worse = [f"{size // KIB} KiB ({ratios[size]:.2f})" for size in SIZES if size > first and ratios[size] > 1]
    lasts = "but slower again at " + ", ".join(worse) if worse else "and at every larger size"
    return f"{kernel}: no slower than copy from {first // KIB} KiB, {lasts}"


Cells = dict[tuple[str, int], list[float]]  # (method, body size) → µs per transfer, one per pass
PAIRS = (("sendfile", "file copy"), ("splice", "socket copy"))  # (kernel path, its copy baseline)


def measure(seconds: float, repeat: int, pinned: bool) -> Cells:
    fd, path = tempfile.mkstemp(prefix="fastbody-small-", suffix=".bin", dir="/tmp")
    os.write(fd, os.urandom(FILE_SIZE))
    os.pread(fd, FILE_SIZE, 0)  # into the page cache
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]  # client, upstream
    # Pinned: the sender has CPU 0 to itself, as a server whose client is elsewhere; the drainer
    # and the feeder share the other CPUs.
    helper_cpus = os.sched_getaffinity(0) - {0} if pinned else None
    children = (
        FORK.Process(target=drain_main, args=(listeners[0].getsockname(), helper_cpus), daemon=True),
        FORK.Process(target=feed_main, args=(listeners[1].getsockname(), path, helper_cpus), daemon=True),
    )
    for child in children:
        child.start()
    sender: Sender | None = None
    accepted: list[socket.socket] = []
    try:
        for listener in listeners:
            listener.settimeout(TIMEOUT)
            accepted.append(bounded(listener.accept()[0]))
        client, upstream = accepted
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each body leaves at once
        pin({0} if pinned else None)
        sender = Sender(client, upstream, fd)
        methods = {
            "sendfile": sender.file_sendfile,
            "file copy": sender.file_copy,
            "splice": sender.socket_splice,
            "socket copy": sender.socket_copy,
        }
        cells: Cells = {(name, size): [] for name in methods for size in SIZES}
        for _ in range(repeat):  # interleaved, so slow drift hits every cell alike
            for size in SIZES:
                for name, move in methods.items():
                    cells[name, size].append(per_transfer_us(move, size, seconds))
        return cells
    finally:
        if sender is not None:
            sender.close()
        for sock in accepted:  # EOF for the drainer, ECONNRESET for the feeder
            sock.close()
        for child in children:
            child.join(TIMEOUT)
            if child.is_alive():
                child.kill()
                child.join()
        for listener in listeners:
            listener.close()
        os.close(fd)
        os.unlink(path)


def report(cells: Cells) -> None:
    us = {cell: statistics.median(values) for cell, values in cells.items()}
    # Kernel over copy within each pass (measured back to back), then the median over passes.
    per_pass = {
        (kernel, size): [k / c for k, c in zip(cells[kernel, size], cells[copy, size], strict=True)]
        for kernel, copy in PAIRS
        for size in SIZES
    }
    ratio = {
        kernel: {size: statistics.median(per_pass[kernel, size]) for size in SIZES} for kernel, _ in PAIRS
    }
    print("| body | file: sendfile | file: preadv+sendall | ratio (min-max) ", end="")
    print("| socket: splice via 1 MiB pipe | socket: recv_into+sendall | ratio (min-max) |")
    print("|---|---|---|---|---|---|---|")
    for size in SIZES:
        row = [f"{size // KIB} KiB"]
        for kernel, copy in PAIRS:
            spread = per_pass[kernel, size]
            row += [f"{us[kernel, size]:.1f}", f"{us[copy, size]:.1f}"]
            row.append(f"{ratio[kernel][size]:.2f} ({min(spread):.2f}-{max(spread):.2f})")
        print("| " + " | ".join(row) + " |")
    print(f"\n{verdict('sendfile', ratio['sendfile'])}; {verdict('splice', ratio['splice'])}", end="")
    print(f" (SMALL_BODY is now {plan.SMALL_BODY // KIB} KiB).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.25, help="wall seconds of transfers per cell")
    parser.add_argument("--repeat", type=int, default=20, help="passes over all cells; medians are shown")
    parser.add_argument("--no-pin", action="store_true", help="let the scheduler place all three processes")
    args = parser.parse_args()
    pinned = not args.no_pin and len(os.sched_getaffinity(0)) > 1 and 0 in os.sched_getaffinity(0)
    cells = measure(args.seconds, args.repeat, pinned)
    placement = "sender pinned to CPU 0, drainer and feeder on the others" if pinned else "unpinned"
    print(f"\nSender CPU µs per transfer over one kept-open loopback connection ({placement});")
    print(f"medians of {args.repeat} passes of {args.seconds:g} s per cell; ratio = kernel path / copy.\n")
    report(cells)


if __name__ == "__main__":
    main()
