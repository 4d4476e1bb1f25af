"""Memory after many concurrent copies: when no pipe can be had (``FASTBODY_MAX_PIPES=0``, as
when an unprivileged user's pipe budget is spent), socket bodies are copied through a 1 MiB
buffer each. Sixty at once must not leave the worker's RSS up once they are done, round after
round: a buffer malloc hands out stays in its thread's arena after it is freed."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("gunicorn")
pytest.importorskip("uvicorn")

from conftest import FaultTable
from resources import assert_released, held, settled
from servers import MIB, Server, fetch, free_port, launch, moved, start_uvicorn, stop

APPS = Path(__file__).resolve().parent / "apps"
CONCURRENT = 60
SERVERS = ["gthread", "h11"]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("copy-memory")


@pytest.fixture(scope="module")
def blob(tmp: Path) -> tuple[str, str]:
    data = os.urandom(4 * MIB)
    path = tmp / "blob.bin"
    path.write_bytes(data)
    return str(path), hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module", params=SERVERS)
def server(request: pytest.FixtureRequest, tmp: Path) -> Iterator[Server]:
    env = {"FASTBODY_MAX_PIPES": "0"}  # every socket or pipe body is copied
    if request.param == "gthread":
        port = free_port()
        command = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-b", f"127.0.0.1:{port}"]
        command += ["-w", "1", "-k", "egg:fastbody#gthread", "--threads", str(CONCURRENT)]
        command += ["--chdir", str(APPS), "wsgi_app:app"]
        running = launch(command, port, tmp / f"gthread-{port}.log", env=env)
    else:
        running = start_uvicorn("asgi_app:app", APPS, tmp, "h11", "asyncio", env=env)
    running.kind = request.param  # type: ignore[attr-defined]
    yield running
    stop(running)


ROUNDS = 3
RSS_SLACK_MIB = 8  # sixty 1 MiB buffers kept would be 60


def test_rss_comes_back_after_concurrent_copies(
    server: Server, blob: tuple[str, str], fault_table: FaultTable
) -> None:
    path, digest = blob
    url = f"{server.url}/socket?path={path}&length=1"
    pid = int(server.info()["pid"])
    for _ in range(4):  # warm-up: imports, the first buffers, the thread pool
        assert fetch(url).sha256 == digest
    before, stats = held(pid), server.stats()
    for _ in range(ROUNDS):
        with ThreadPoolExecutor(CONCURRENT) as clients:
            got = list(clients.map(lambda _: fetch(url), range(CONCURRENT)))
        assert all((answer.status, answer.sha256) == (200, digest) for answer in got)
    assert moved(stats, server.stats()).get("copy", 0) == ROUNDS * CONCURRENT * os.path.getsize(path)
    after = settled(pid, before, rss_slack_mib=RSS_SLACK_MIB)
    fault_table.record(
        f"{ROUNDS}x {CONCURRENT} concurrent copies",
        server.kind,
        "all whole",
        before,
        after,  # type: ignore[attr-defined]
    )
    assert_released(before, after, rss_slack_mib=RSS_SLACK_MIB)
