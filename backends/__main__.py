"""Start the services of ``backends/`` by hand.

    python -m backends list
    python -m backends up [NAME ...] [--latency-ms N] [--env-file PATH] [--tracking NAME]

``up`` starts the named services (all registered ones by default) side by side, prints for each
the ``export`` lines a client needs, and keeps them up until Ctrl-C / SIGTERM, then stops them.
A service whose module is not importable yet, or that fails to start, is skipped with a message.

With ``--latency-ms N`` every loopback endpoint found in a service's environment
(``127.0.0.1:PORT`` / ``localhost:PORT``) gets a :class:`~backends.proxy.LatencyProxy` in front
of it and the printed variables point at the proxy; ``BACKENDS_PROXY_<NAME>`` holds the proxies'
control URLs (``GET …/stats``, ``POST …/reset``), for a benchmark in another process.
Traffic a service redirects to its own port (an absolute URL in a response) bypasses the proxy.

``--env-file PATH`` also writes the ``export`` lines to PATH (mode 0600: it may hold test
credentials), removed again on exit, so a script can wait for it and ``source`` it.

Where MLflow logs is never left to the order of the lines: every service a client can log to
(a fresh store on each storage service, an MLflow server's URL) is exported as
``BACKENDS_TRACKING_URI_<NAME>``, and ``MLFLOW_TRACKING_URI`` only for the one chosen with
``--tracking NAME``, or for the only such service started.  Started with several (``up s3
mlflow``), none is exported unless chosen, and a comment says how; an MLflow server's URL
no longer overrides the store it was started beside.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shlex
import signal
import sys
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import backends
from backends._common import LOOPBACK, StorageService
from backends.proxy import LatencyProxy

_ENDPOINT = re.compile(r"\b(127\.0\.0\.1|localhost):(\d{2,5})\b")


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _load(name: str) -> type | None:
    """The service class, or None with the reason on stderr (another engineer's service may
    not exist yet: that must not stop the others)."""
    try:
        return backends.load(name)
    except (ImportError, AttributeError, ValueError) as e:
        _err(f"# {name}: skipped, not importable ({type(e).__name__}: {e})")
        return None


def _start(name: str) -> tuple[Any, float] | None:
    """The started service and its start-up time in seconds, or None (reason on stderr)."""
    cls = _load(name)
    if cls is None:
        return None
    svc = cls()
    t0 = time.monotonic()
    try:
        svc.start()
    except Exception as e:
        with contextlib.suppress(Exception):
            svc.stop()
        _err(f"# {name}: failed to start: {e}")
        return None
    return svc, time.monotonic() - t0


def _proxied(name: str, env: Mapping[str, str], latency_ms: float,
             proxies: list[LatencyProxy]) -> dict[str, str]:
    """``env`` with each loopback endpoint replaced by a latency proxy in front of it."""
    by_port: dict[int, LatencyProxy] = {}

    def swap(m: re.Match[str]) -> str:
        port = int(m.group(2))
        if port not in by_port:
            proxy = LatencyProxy(LOOPBACK, port, latency_ms, name=f"{name}:{port}")
            proxy.start()
            proxies.append(proxy)
            by_port[port] = proxy
        return f"{m.group(1)}:{by_port[port].port}"

    out = {key: _ENDPOINT.sub(swap, value) for key, value in env.items()}
    if by_port:
        var = "BACKENDS_PROXY_" + re.sub(r"\W", "_", name).upper()
        out[var] = " ".join(p.control_url for p in by_port.values())
    return out


def tracking_variable(name: str) -> str:
    """The variable that holds where a client of service ``name`` logs."""
    return "BACKENDS_TRACKING_URI_" + re.sub(r"\W", "_", name).upper()


def _describe(name: str, svc: Any, seconds: float, latency_ms: float | None,
              proxies: list[LatencyProxy]) -> tuple[list[str], str | None]:
    """The lines that describe a started service, and the tracking URI a client of it logs to
    (None for a service nothing logs to, such as PostgreSQL)."""
    lines = [f"# {name}: {type(svc).__name__}, up in {seconds:.1f} s"]
    env = dict(svc.env)
    if latency_ms is not None:
        before = len(proxies)
        env = _proxied(name, env, latency_ms, proxies)
        if len(proxies) > before:
            lines.append(f"#   +{latency_ms:g} ms per round trip, through "
                         f"{len(proxies) - before} latency proxy(-ies)")
    # An MLflow server's MLFLOW_TRACKING_URI is one candidate among others: up() decides.
    target = env.pop("MLFLOW_TRACKING_URI", None)
    if getattr(svc, "url", None):
        lines.append(f"#   {'direct ' if latency_ms is not None else ''}url: {svc.url}")
    if getattr(svc, "backend_store_uri", None):
        lines.append(f"#   backend store: {svc.backend_store_uri}")
    if isinstance(svc, StorageService):
        try:
            target = svc.new_store("demo")
            lines.append(f"#   a fresh store: {target}")
        except Exception as e:
            lines.append(f"#   no fresh store: {e}")
    elif callable(getattr(svc, "new_database", None)):
        with contextlib.suppress(Exception):
            lines.append(f"#   a fresh database: {svc.new_database('demo')}")
    lines += [f"export {key}={shlex.quote(value)}" for key, value in env.items()]
    if target is not None:
        lines.append(f"export {tracking_variable(name)}={shlex.quote(target)}")
    return lines, target


def _tracking_lines(targets: Mapping[str, str], chosen: str | None) -> list[str]:
    """``MLFLOW_TRACKING_URI`` for the chosen service, or the only one; otherwise a comment
    that says how to choose (sourcing the file must not log somewhere the user did not mean)."""
    if chosen is None and len(targets) == 1:
        chosen = next(iter(targets))
    if chosen is not None and chosen in targets:
        return [f"# MLflow logs to {chosen}",
                f"export MLFLOW_TRACKING_URI={shlex.quote(targets[chosen])}"]
    if chosen is not None:
        return [f"# MLFLOW_TRACKING_URI not set: {chosen} did not start"]
    if not targets:
        return []
    choices = " or ".join(f"${tracking_variable(n)}" for n in targets)
    return [f"# MLFLOW_TRACKING_URI not set: {len(targets)} services take it "
            f"({', '.join(targets)}); choose with --tracking NAME, or "
            f"export MLFLOW_TRACKING_URI={choices}"]


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def up(names: list[str], latency_ms: float | None, env_file: Path | None,
       tracking: str | None = None) -> int:
    for name in names:
        if name not in backends.SERVICES:
            _err(f"# {name}: skipped, not registered (known: {', '.join(backends.SERVICES)})")
    names = [n for n in dict.fromkeys(names) if n in backends.SERVICES] if names \
        else list(backends.SERVICES)
    if not names:
        return 1
    if tracking is not None and tracking not in names:
        _err(f"# --tracking {tracking}: not among the services to start ({', '.join(names)})")
        return 2
    # SIGTERM and a closed terminal clean up exactly like Ctrl-C.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    running: list[tuple[str, Any, float]] = []
    proxies: list[LatencyProxy] = []
    pool = ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="start")
    # Started side by side: the MLflow server alone takes ~10 s.
    futures: dict[Future[Any], str] = {pool.submit(_start, n): n for n in names}
    try:
        lines: list[str] = []
        for fut in as_completed(futures):
            started = fut.result()
            if started is not None:
                running.append((futures[fut], *started))
        if not running:
            _err("# no service started")
            return 1
        targets: dict[str, str] = {}
        for name, svc, seconds in sorted(running, key=lambda r: names.index(r[0])):
            described, target = _describe(name, svc, seconds, latency_ms, proxies)
            lines += [*described, ""]
            if target is not None:
                targets[name] = target
        lines += _tracking_lines(targets, tracking)
        text = "\n".join(lines)
        print(text, flush=True)
        if env_file is not None:
            tmp = env_file.with_name(env_file.name + ".tmp")
            tmp.write_text(text)
            tmp.chmod(0o600)
            tmp.replace(env_file)  # whole or absent: a waiting script never reads half a file
        _err("# up; Ctrl-C to stop")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        _err("# stopping…")
        # Services still starting finish first, so that they can be stopped too.
        pool.shutdown(wait=True, cancel_futures=True)
        for fut in futures:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                started = fut.result()
                if started is not None and all(started[0] is not r[1] for r in running):
                    running.append((futures[fut], *started))
        for proxy in proxies:
            proxy.stop()
        for name, svc, _ in reversed(running):
            try:
                svc.stop()
            except Exception as e:
                _err(f"# {name}: stop failed: {e}")
        if env_file is not None:
            env_file.unlink(missing_ok=True)
    return 0


def list_services() -> int:
    for name, target in backends.SERVICES.items():
        try:
            backends.load(name)
            status = "ok"
        except (ImportError, AttributeError, ValueError) as e:
            status = f"not importable: {type(e).__name__}: {e}"
        kind = "storage" if name in backends.STORAGE_SERVICES else "service"
        print(f"{name:<16} {kind:<8} {target:<50} {status}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backends",
                                     description="Start cloudtrack's test services by hand.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the registered services")
    p_up = sub.add_parser("up", help="start services and keep them up until Ctrl-C")
    p_up.add_argument("names", nargs="*", metavar="NAME", help="default: all registered")
    p_up.add_argument("--latency-ms", type=float, default=None,
                      help="put a latency proxy adding N ms per round trip in front of each")
    p_up.add_argument("--env-file", type=Path, default=None,
                      help="also write the export lines here (removed on exit)")
    p_up.add_argument("--tracking", metavar="NAME", default=None,
                      help="the service MLFLOW_TRACKING_URI points at (default: the only one "
                           "a client can log to; with several, none)")
    args = parser.parse_args(argv)
    if args.command == "list":
        return list_services()
    return up(args.names, args.latency_ms, args.env_file, args.tracking)


if __name__ == "__main__":
    sys.exit(main())
