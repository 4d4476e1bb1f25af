"""What ``serve`` and ``proxy`` share: the extras they need, the server flags (each also a
``FASTBODY_*`` variable), the port, certificate and capability checks made before anything
starts, handing over to uvicorn or gunicorn, and the app that reports the bytes moved when its
process stops."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import ssl
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import fastbody
from fastbody.config import parse_seconds

from . import metrics_port
from .usage import UsageError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
"""uvicorn's levels; gunicorn has no ``trace`` and gets ``debug`` for it."""

EXTRAS = {"uvicorn": "uvicorn", "starlette": "uvicorn", "h11": "uvicorn", "uvicorn_worker": "uvicorn"}
"""The extra of pyproject.toml that installs each module a command needs (else its own name)."""


# The server flags: flag > FASTBODY_<NAME> > default


@dataclass(frozen=True)
class Flag:
    """A server flag whose default comes from ``variable`` when the flag is not given."""

    dest: str
    variable: str
    parse: Callable[[str], Any]
    default: Any

    def resolve(self, given: Any, environ: Mapping[str, str]) -> Any:
        if given is not None:
            return given
        text = environ.get(self.variable, "").strip()
        if not text:
            return self.default
        try:
            return self.parse(text)
        except (ValueError, argparse.ArgumentTypeError) as error:
            reason = str(error).removesuffix(f": {text}")  # the value is named once, first
            raise UsageError(f"{self.variable}={text!r}: {reason}") from None


def _level(text: str) -> str:
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"not a log level (one of {', '.join(LOG_LEVELS)}): {text}")
    return level


def _switch(text: str) -> bool:
    word = text.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not on or off (1/0, true/false, yes/no, on/off): {text}")


def _seconds(text: str) -> float | None:
    try:
        return parse_seconds(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{error}: {text}") from None


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port: {text}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"not a port: {text}")
    return port


def _text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text.strip()


FLAGS = (
    Flag("certfile", "FASTBODY_CERTFILE", _text, None),
    Flag("keyfile", "FASTBODY_KEYFILE", _text, None),
    Flag("log_level", "FASTBODY_LOG_LEVEL", _level, "info"),
    Flag("access_log", "FASTBODY_ACCESS_LOG", _switch, True),
    Flag("forwarded_allow_ips", "FASTBODY_FORWARDED_ALLOW_IPS", _text, None),
    Flag("send_timeout", "FASTBODY_SEND_TIMEOUT", _seconds, fastbody.config.Settings().send_timeout),
    Flag("metrics_port", "FASTBODY_METRICS_PORT", port_number, None),
)


def server_flags(parser: argparse.ArgumentParser) -> None:
    """TLS, logging, proxy headers and the send timeout; each flag's default is its variable's
    value, then the default (resolved by :func:`resolve_flags`, after parsing)."""
    parser.add_argument(
        "--certfile",
        type=_text,
        metavar="PEM",
        help="serve HTTPS with this certificate (and its key, unless --keyfile) [FASTBODY_CERTFILE]",
    )
    parser.add_argument(
        "--keyfile", type=_text, metavar="PEM", help="the certificate's private key [FASTBODY_KEYFILE]"
    )
    parser.add_argument(
        "--log-level",
        type=_level,
        metavar="LEVEL",
        help=f"{', '.join(LOG_LEVELS)} (default info) [FASTBODY_LOG_LEVEL]",
    )
    parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        help="one line per request (default on) [FASTBODY_ACCESS_LOG=1|0]",
    )
    parser.add_argument(
        "--forwarded-allow-ips",
        type=_text,
        metavar="IPS",
        help="comma-separated addresses (or *) trusted for X-Forwarded-* headers"
        " (default: the server's, 127.0.0.1) [FASTBODY_FORWARDED_ALLOW_IPS]",
    )
    parser.add_argument(
        "--send-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="cut off a client that takes no body bytes for this long (default 60, 0 for none)"
        " [FASTBODY_SEND_TIMEOUT]",
    )
    parser.add_argument(
        "--metrics-port",
        type=port_number,
        metavar="PORT",
        help="Prometheus counters of every worker on this port (needs fastbody[metrics])"
        " [FASTBODY_METRICS_PORT]",
    )


def resolve_flags(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> None:
    """Give each server flag not on the command line its variable's value, or its default, and
    check them together (a key needs a certificate; the certificate must load)."""
    environ = os.environ if environ is None else environ
    for flag in FLAGS:
        setattr(args, flag.dest, flag.resolve(getattr(args, flag.dest), environ))
    if args.keyfile is not None and args.certfile is None:
        raise UsageError("--keyfile needs --certfile")
    if args.certfile is not None:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(args.certfile, args.keyfile)
        except (OSError, ssl.SSLError) as error:
            reason = getattr(error, "strerror", None) or getattr(error, "reason", None) or error
            raise UsageError(f"cannot use the certificate {args.certfile}: {reason}") from None


def apply_send_timeout(args: argparse.Namespace) -> None:
    """The send timeout for this process (``fastbody.configure``) and, through the environment,
    for every worker process it starts (which reads ``FASTBODY_SEND_TIMEOUT`` at import)."""
    fastbody.configure(send_timeout=args.send_timeout)
    os.environ["FASTBODY_SEND_TIMEOUT"] = repr(args.send_timeout or 0)


def reporting(route: Any) -> Any:
    """A Starlette app around ``route`` that logs, when its process stops, how many bytes each
    path moved (``fastbody.stats()``): how an operator tells that the kernel paths were used."""
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette

    import fastbody

    metrics_port.install_in_worker()

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        moved = ", ".join(f"{path} {count}" for path, count in fastbody.stats().items())
        logging.getLogger("uvicorn.error").info("fastbody: bytes moved by this process: %s", moved)

    return Starlette(routes=[route], lifespan=lifespan)


def needs_servers(server: str) -> None:
    """The extras a command needs, checked before anything starts."""
    modules = ["uvicorn", "starlette", "h11"] + (
        ["gunicorn", "uvicorn_worker"] if server == "gunicorn" else []
    )
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            extra = EXTRAS.get(module, module)
            raise UsageError(f"needs {module}: pip install 'fastbody[{extra}]'") from None


def check_port(host: str, port: int) -> None:
    """Fail now, in one line, if the address cannot be listened on."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} on {host} is already in use") from None
        raise UsageError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def announce(what: str, args: argparse.Namespace) -> None:
    from fastbody.capabilities import probe

    try:
        paths = probe().describe()
    except OSError as error:  # no loopback to try them on: say so, and serve anyway
        paths = f"unknown ({error.strerror or error})"
    workers = f"{args.workers} worker{'s' if args.workers != 1 else ''}"
    scheme = "https" if args.certfile else "http"
    print(
        f"fastbody: {what} at {scheme}://{args.host}:{args.port}/ ({args.server}, {workers});"
        f" zero-copy on this machine: {paths}",
        file=sys.stderr,
        flush=True,
    )


def run_server(args: argparse.Namespace, factory: str) -> None:
    """Hand over to the server; it handles SIGINT/SIGTERM: in-flight responses finish or are
    closed, worker processes are stopped, and the command exits. ``factory`` is a
    ``module:function`` string each worker process resolves to build its own app. The server
    flags must have been resolved (:func:`resolve_flags`)."""
    apply_send_timeout(args)
    if args.metrics_port is not None:
        if args.metrics_port == args.port:
            raise UsageError(f"--metrics-port {args.metrics_port} is the server's own port")
        check_port(args.host, args.metrics_port)
    metrics_port.prepare(args)
    if args.server == "gunicorn":
        os.execv(sys.executable, gunicorn_command(args, factory))  # the process becomes gunicorn's master
    import uvicorn

    metrics_port.serve_here()  # the launcher answers scrapes for all its workers
    uvicorn.run(factory, **uvicorn_options(args))


def uvicorn_options(args: argparse.Namespace) -> dict[str, Any]:
    """``uvicorn.run``'s keyword arguments for these flags (the app factory aside)."""
    options: dict[str, Any] = {
        "factory": True,
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "http": "fastbody.integrations.uvicorn:AutoProtocol",
        "log_level": args.log_level,
        "access_log": args.access_log,
        "timeout_graceful_shutdown": 10,
    }
    if args.forwarded_allow_ips is not None:  # else uvicorn's own default ($FORWARDED_ALLOW_IPS, 127.0.0.1)
        options["forwarded_allow_ips"] = args.forwarded_allow_ips
    if args.certfile is not None:
        options["ssl_certfile"] = args.certfile
        options["ssl_keyfile"] = args.keyfile
    return options


def gunicorn_command(args: argparse.Namespace, factory: str) -> list[str]:
    """gunicorn's command line for these flags, with fastbody's uvicorn worker (which takes TLS,
    the log level, the access log and the trusted proxies from gunicorn's settings)."""
    command = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-k", "egg:fastbody#uvicorn"]
    command += ["-w", str(args.workers), "-b", _bind(args.host, args.port), "--graceful-timeout", "10"]
    command += ["--log-level", "debug" if args.log_level == "trace" else args.log_level]
    if args.access_log and args.log_level in ("info", "debug", "trace"):  # as under uvicorn, whose
        command += ["--access-logfile", "-"]  # access lines are INFO records a higher level hides
    if args.forwarded_allow_ips is not None:
        command += ["--forwarded-allow-ips", args.forwarded_allow_ips]
    if args.certfile is not None:
        command += ["--certfile", args.certfile]
        if args.keyfile is not None:
            command += ["--keyfile", args.keyfile]
    if args.metrics_port is not None:  # the master answers scrapes (its when_ready hook)
        command += ["-c", metrics_port.GUNICORN_HOOKS]
    return [*command, f"{factory}()"]


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
