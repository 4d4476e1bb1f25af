"""``fastbody.config``: the knobs' defaults, their ``FASTBODY_*`` variables, ``fastbody.configure``,
and the engine honouring what was configured (on real sockets, told by ``fastbody.stats()``)."""

from __future__ import annotations

import ast
import fcntl
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from conftest import Receiver, StatsDelta, feed_socket, sha256, tcp_pair

import fastbody
from fastbody import config, pipes, plan
from fastbody.config import Settings

KIB, MIB = 1 << 10, 1 << 20


@pytest.fixture(autouse=True)
def restore() -> Iterator[None]:
    before = config.current()
    yield
    fastbody.configure(before)
    pipes.default_pool.clear()


# -- parsing ------------------------------------------------------------------------------------


def test_defaults() -> None:
    assert Settings() == Settings.from_environ({})
    assert Settings() == Settings(
        send_timeout=60.0, small_body=32 * KIB, pipe_size=MIB, max_pipes=64, max_idle_pipes=16
    )
    assert Settings().small_body == 32 << 10  # what benchmarks/small_bodies.py measured


def test_from_environ() -> None:
    settings = Settings.from_environ(
        {
            "FASTBODY_SEND_TIMEOUT": "2.5",
            "FASTBODY_SMALL_BODY": "16K",
            "FASTBODY_PIPE_SIZE": "4MiB",
            "FASTBODY_MAX_PIPES": "8",
            "FASTBODY_MAX_IDLE_PIPES": "0",
            "FASTBODY_UNRELATED": "x",
        }
    )
    assert settings == Settings(
        send_timeout=2.5, small_body=16 * KIB, pipe_size=4 * MIB, max_pipes=8, max_idle_pipes=0
    )
    assert Settings.from_environ({"FASTBODY_SEND_TIMEOUT": "0"}).send_timeout is None
    assert Settings.from_environ({"FASTBODY_SMALL_BODY": " "}).small_body == 32 * KIB  # empty: default


@pytest.mark.parametrize(
    ("text", "size"),
    [("32768", 32768), ("32K", 32 * KIB), ("32kib", 32 * KIB), ("1M", MIB), ("1 MiB", MIB), ("2g", 2 << 30)],
)
def test_sizes(text: str, size: int) -> None:
    assert config.parse_size(text) == size


@pytest.mark.parametrize(
    ("variable", "text", "message"),
    [
        ("FASTBODY_SEND_TIMEOUT", "soon", "not a number of seconds"),
        ("FASTBODY_SEND_TIMEOUT", "-1", "0 (none) or more"),
        ("FASTBODY_SEND_TIMEOUT", "inf", "0 (none) or more"),
        ("FASTBODY_SMALL_BODY", "big", "not a size in bytes"),
        ("FASTBODY_SMALL_BODY", "-5", "not a size in bytes"),
        ("FASTBODY_PIPE_SIZE", "1.5M", "not a size in bytes"),
        ("FASTBODY_PIPE_SIZE", "100", "pipe_size must be an integer of at least 4096"),
        ("FASTBODY_MAX_PIPES", "many", "not a whole number"),
        ("FASTBODY_MAX_IDLE_PIPES", "-1", "max_idle_pipes must be an integer of at least 0"),
    ],
)
def test_bad_environment_names_the_variable(variable: str, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        Settings.from_environ({variable: text})
    assert str(raised.value).startswith(f"{variable}={text!r}: ")


def test_the_environment_is_read_when_fastbody_is_imported() -> None:
    show = "import fastbody, fastbody.plan as p, fastbody.pipes as q;"
    show += " print(p.SMALL_BODY, q.default_pool.size, q.default_pool.max_pipes, fastbody.config.current())"
    env = {**os.environ, "FASTBODY_SMALL_BODY": "1M", "FASTBODY_PIPE_SIZE": "256K", "FASTBODY_MAX_PIPES": "3"}
    done = subprocess.run([sys.executable, "-c", show], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{MIB} {256 * KIB} 3 Settings("), done.stdout


def test_a_bad_variable_stops_the_import() -> None:
    env = {**os.environ, "FASTBODY_PIPE_SIZE": "huge"}
    done = subprocess.run(
        [sys.executable, "-c", "import fastbody"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "ValueError: FASTBODY_PIPE_SIZE='huge': not a size in bytes (such as 32768, 32K or 1MiB)"
    )


def test_configure_in_code() -> None:
    chosen = fastbody.configure(send_timeout=30, small_body=KIB)
    assert chosen == config.current() == Settings(send_timeout=30, small_body=KIB)
    assert plan.SMALL_BODY == KIB
    assert fastbody.configure(pipe_size=512 * KIB).small_body == KIB  # changes apply on top
    assert fastbody.configure(Settings()) == Settings()
    assert plan.SMALL_BODY == 32 * KIB and pipes.default_pool.size == MIB


def test_configure_refuses_bad_values_and_changes_nothing() -> None:
    before = config.current()
    with pytest.raises(ValueError, match="small_body"):
        fastbody.configure(small_body=-1)
    with pytest.raises(ValueError, match="send_timeout"):
        fastbody.configure(send_timeout=0)  # in code, no timeout is None
    with pytest.raises(TypeError):
        fastbody.configure(pipe_sise=MIB)
    assert config.current() == before and before.small_body == plan.SMALL_BODY


# -- the engine honours it ----------------------------------------------------------------------


def send(source: object, count: int | None = None) -> tuple[int, int, str]:
    server, client = tcp_pair()
    receiver = Receiver(client)
    try:
        sent = fastbody.transfer(server, source, count=count, timeout=30)
    finally:
        server.close()
    received, digest = receiver.result()
    client.close()
    return sent, received, digest


@pytest.fixture
def make_file(tmp_path: object) -> Callable[[bytes], str]:
    def make(data: bytes) -> str:
        path = os.path.join(str(tmp_path), f"body-{len(data)}")
        with open(path, "wb") as file:
            file.write(data)
        return path

    return make


def test_small_body_threshold_is_honoured(make_file: Callable[[bytes], str]) -> None:
    data = os.urandom(100 * KIB)
    path = make_file(data)
    moved = StatsDelta()
    assert send(path) == (len(data), len(data), sha256(data))
    assert moved().get("sendfile") == len(data)  # the default: 100 KiB is no small body

    fastbody.configure(small_body=MIB)
    moved = StatsDelta()
    assert send(path) == (len(data), len(data), sha256(data))
    assert moved() == {"copy": len(data)}

    fastbody.configure(small_body=0)  # size never decides: even 1000 bytes go by sendfile
    tiny = make_file(data[:1000])
    moved = StatsDelta()
    assert send(tiny) == (1000, 1000, sha256(data[:1000]))
    assert moved() == {"sendfile": 1000}


def test_pipe_size_is_honoured() -> None:
    fastbody.configure(pipe_size=64 * KIB)  # under 256 KiB: asked for, so spliced through
    data = os.urandom(4 * MIB)
    moved = StatsDelta()
    assert send(feed_socket(data), count=len(data)) == (len(data), len(data), sha256(data))
    assert moved().get("splice", 0) >= len(data) // 2, moved()
    pipe = pipes.default_pool.acquire()
    assert pipe is not None
    try:
        assert pipe.size == fcntl.fcntl(pipe.write_fd, fcntl.F_GETPIPE_SZ) == 64 * KIB
    finally:
        pipes.default_pool.release(pipe, empty=True)

    fastbody.configure(pipe_size=MIB)  # idle pipes of the old size are closed
    assert pipes.default_pool.idle() == 0
    pipe = pipes.default_pool.acquire()
    assert pipe is not None
    try:
        assert pipe.size == MIB
    finally:
        pipes.default_pool.release(pipe, empty=True)


def test_pipe_pool_size_is_honoured() -> None:
    fastbody.configure(max_pipes=0)  # no pipe to splice through: socket bodies copy
    data = os.urandom(MIB)
    moved = StatsDelta()
    assert send(feed_socket(data), count=len(data)) == (len(data), len(data), sha256(data))
    assert moved() == {"copy": len(data)}
    assert pipes.default_pool.acquire() is None


UNPRIVILEGED = ["setpriv", "--bounding-set=-sys_resource", "--inh-caps=-sys_resource"]
SPLICED = """
import socket, threading, fastbody
size = 4 << 20
up_a, up_b = socket.socketpair()
down_a, down_b = socket.socketpair()
threading.Thread(target=lambda: (up_a.sendall(b"x" * size), up_a.close())).start()
drain = threading.Thread(target=lambda: [None for _ in iter(lambda: down_b.recv(1 << 20), b"")])
drain.start()
fastbody.transfer(down_a, up_b, count=size)
down_a.close()
drain.join()
print(dict(fastbody.stats()))
"""


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed")
def test_a_pipe_size_past_pipe_max_size_still_splices_unprivileged() -> None:
    """``F_SETPIPE_SZ`` past ``/proc/sys/fs/pipe-max-size`` is EPERM without CAP_SYS_RESOURCE:
    the pipe then gets the largest size allowed, not the 64 KiB it was born with (too small to
    splice through, so every socket body was copied)."""
    env = {**os.environ, "FASTBODY_PIPE_SIZE": "4MiB"}
    result = subprocess.run(
        [*UNPRIVILEGED, sys.executable, "-c", SPLICED], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    moved = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    assert moved["splice"] == 4 << 20 and moved["copy"] == 0, moved
