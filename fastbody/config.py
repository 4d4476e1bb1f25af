"""The engine's knobs in one frozen object: defaults, ``FASTBODY_*`` variables, or code.

    fastbody.configure(small_body=16 << 10, pipe_size=4 << 20)  # in code, before serving
    FASTBODY_PIPE_SIZE=4M gunicorn -k egg:fastbody#sync app:app  # or from the environment

The environment is read once, when fastbody is imported; a bad value raises ``ValueError``
there, naming the variable. ``configure`` replaces what it is given and writes the values into
the module-level names the engine reads (``plan.SMALL_BODY``, the pipe pool's limits), so a
transfer reads a global as before and never the environment.

``send_timeout`` is not used by the engine itself (``transfer`` takes a ``timeout``): it is the
one the servers' integrations read (fastbody's uvicorn protocols). The handoff roots
(``FASTBODY_XSENDFILE_ROOTS``, ``FASTBODY_ACCEL_REDIRECT``) are HTTP, not engine, and are read
by ``fastbody.integrations.files.handoff``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

__all__ = ["ENVIRONMENT", "Settings", "configure", "current", "parse_seconds", "parse_size"]

T = TypeVar("T")

KIB = 1 << 10
MIN_PIPE = 4 * KIB  # one page: the smallest pipe Linux makes


@dataclass(frozen=True)
class Settings:
    """Every knob of the engine (and the send timeout its servers share), with its default."""

    send_timeout: float | None = 60.0
    """Seconds a server lets a body make no progress (a client that stopped reading) before
    it cuts the connection; ``None`` (``0`` in the environment) for none."""

    small_body: int = 32 * KIB
    """Bodies known to be shorter are copied (with the head, in one call), never spliced or
    sendfile'd: measured by ``benchmarks/small_bodies.py``. ``0``: size never decides."""

    pipe_size: int = 1 << 20
    """Bytes asked for each pooled pipe (``F_SETPIPE_SZ``); also what a subprocess's pipe is
    grown to. A pipe that comes back under ``min(256 KiB, pipe_size)`` is not spliced through."""

    max_pipes: int = 64
    """Pooled pipes in use at once in one process; one more transfer copies. ``0``: sockets are
    never spliced."""

    max_idle_pipes: int = 16
    """Idle pipes kept for reuse; more are closed when returned."""

    def __post_init__(self) -> None:
        timeout = self.send_timeout
        if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"send_timeout must be a positive number of seconds or None: {timeout!r}")
        least_values = (("small_body", 0), ("pipe_size", MIN_PIPE), ("max_pipes", 0), ("max_idle_pipes", 0))
        for name, least in least_values:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an integer of at least {least}: {value!r}")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The defaults, with each ``FASTBODY_*`` variable of :data:`ENVIRONMENT` that is set
        (and not empty) in its place. ``ValueError`` names a variable that does not parse."""
        environ = os.environ if environ is None else environ
        changes: dict[str, Any] = {}
        for name, (variable, parse) in ENVIRONMENT.items():
            text = environ.get(variable, "").strip()
            if not text:
                continue
            try:
                changes[name] = parse(text)
                cls(**{name: changes[name]})  # its own bounds, reported with its variable
            except ValueError as error:
                raise ValueError(f"{variable}={text!r}: {error}") from None
        return cls(**changes)


def parse_seconds(text: str) -> float | None:
    """Seconds, ``0`` for none (``None``): ``"60"``, ``"2.5"``, ``"0"``."""
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError("not a number of seconds (0 for none)") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("seconds must be 0 (none) or more")
    return seconds or None


_SIZE = re.compile(r"(\d+)\s*(k|kb|kib|m|mb|mib|g|gb|gib)?", re.IGNORECASE)
_UNITS = {"": 1, "k": KIB, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """Bytes: ``"32768"``, ``"32K"``, ``"32KiB"``, ``"1M"``, ``"1MiB"`` (K, M, G are powers of 1024)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError("not a size in bytes (such as 32768, 32K or 1MiB)")
    return int(match[1]) * _UNITS[(match[2] or "")[:1].lower()]


def _count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("not a whole number") from None


ENVIRONMENT: dict[str, tuple[str, Callable[[str], Any]]] = {
    "send_timeout": ("FASTBODY_SEND_TIMEOUT", parse_seconds),
    "small_body": ("FASTBODY_SMALL_BODY", parse_size),
    "pipe_size": ("FASTBODY_PIPE_SIZE", parse_size),
    "max_pipes": ("FASTBODY_MAX_PIPES", _count),
    "max_idle_pipes": ("FASTBODY_MAX_IDLE_PIPES", _count),
}
"""Each setting's variable and how its text is read."""

assert set(ENVIRONMENT) == {field.name for field in fields(Settings)}


_current = Settings.from_environ()


def current() -> Settings:
    """The settings in force in this process."""
    return _current


def configure(settings: Settings | None = None, /, **changes: Any) -> Settings:
    """Put ``settings`` (default: those in force), with ``changes`` applied, in force in this
    process, and return them: ``fastbody.configure(send_timeout=30, pipe_size=4 << 20)``.

    Call it before serving: transfers already running keep what they started with, idle pooled
    pipes are closed when the pipe size changes, and each process of a server configures its own
    (forked workers inherit the parent's). An unknown name is a ``TypeError``, a bad value a
    ``ValueError``; either way nothing changes."""
    global _current
    chosen = replace(settings or _current, **changes)
    _apply(chosen, _current)
    _current = chosen
    return chosen


def _apply(settings: Settings, before: Settings) -> None:
    """Write ``settings`` into the names the engine reads on its hot path (module globals and
    the default pool's attributes)."""
    from . import pipes, plan  # (pump and capabilities read these names from their modules)

    plan.SMALL_BODY = settings.small_body
    pipes.PIPE_SIZE = settings.pipe_size
    pipes.MIN_PIPE_SIZE = pipes.min_pipe_size(settings.pipe_size)
    pipes.MAX_PIPES = settings.max_pipes
    pipes.MAX_IDLE = settings.max_idle_pipes
    pool = pipes.default_pool
    pool.size, pool.min_size = settings.pipe_size, pipes.MIN_PIPE_SIZE
    pool.max_pipes, pool.max_idle = settings.max_pipes, settings.max_idle_pipes
    if settings.pipe_size != before.pipe_size or settings.max_idle_pipes < before.max_idle_pipes:
        pool.clear()
