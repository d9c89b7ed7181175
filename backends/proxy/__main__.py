"""``python -m backends.proxy HOST:PORT --latency-ms N``: one latency proxy until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from backends.proxy.latency import LatencyProxy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backends.proxy", description=__doc__)
    parser.add_argument("target", help="HOST:PORT to forward to")
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="added to every round trip (default 0: count only)")
    parser.add_argument("--connect-latency-ms", type=float, default=None,
                        help="added to every new connection (default: --latency-ms)")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"target must be HOST:PORT, not {args.target!r}")
    done = threading.Event()
    # SIGTERM ends the proxy as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with LatencyProxy(host, int(port), args.latency_ms,
                      connect_latency_ms=args.connect_latency_ms) as proxy:
        print(f"# {proxy.url} -> {args.target}, +{args.latency_ms:g} ms per round trip")
        print(f"# counters: curl {proxy.control_url}/stats ; curl -X POST "
              f"{proxy.control_url}/reset")
        sys.stdout.flush()
        try:
            done.wait()
        except KeyboardInterrupt:
            pass
        print(f"# {proxy.stats()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
