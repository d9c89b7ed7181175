"""The token command, and a token gate by hand.

    python -m backends.tokens issue --url http://127.0.0.1:PORT --secret-file PATH
    python -m backends.tokens serve --upstream http://127.0.0.1:5000 [--lifetime 10]

``issue`` is what a user's "token command" looks like: it asks the gate's ``POST /_token`` for
a fresh token (the client secret read from ``--secret-file``, sent in a header) and prints the
token on stdout, nothing else; on failure it prints why on stderr and exits 1.  It uses only
the standard library and imports nothing from this repository, so it also runs as a script
(``python backends/tokens/__main__.py issue …``) from any directory — which is how
:meth:`~backends.tokens.TokenGate.token_command` names it.

``serve`` runs a :class:`~backends.tokens.TokenGate` in front of ``--upstream`` until Ctrl-C /
SIGTERM and prints its URL and its token command.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

SECRET_HEADER = "X-Client-Secret"  # as backends.tokens.service, which this must not import


def issue(url: str, secret_file: str, timeout: float) -> str:
    """A fresh token from the gate at ``url``; RuntimeError saying what failed."""
    try:
        secret = Path(secret_file).read_text().strip()
    except OSError as e:
        raise RuntimeError(f"cannot read the client secret from {secret_file}: "
                           f"{e.strerror or e}") from None
    if not secret:
        raise RuntimeError(f"the client secret file {secret_file} is empty")
    endpoint = url.rstrip("/") + "/_token"
    request = urllib.request.Request(endpoint, data=b"", method="POST",
                                     headers={SECRET_HEADER: secret})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.load(response)
    except urllib.error.HTTPError as e:
        detail = e.read()[:500].decode(errors="replace")
        try:
            detail = json.loads(detail).get("message", detail)
        except (ValueError, AttributeError):
            pass
        raise RuntimeError(f"POST {endpoint} answered {e.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise RuntimeError(f"POST {endpoint} failed: {reason}") from None
    except ValueError:
        raise RuntimeError(f"POST {endpoint} did not answer JSON") from None
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise RuntimeError(f"POST {endpoint} answered no access_token")
    return token


def _serve(upstream: str, lifetime: float) -> int:
    # Run as a script, the repository is not on sys.path: add it for the gate itself.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from backends.tokens.service import TokenGate

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with TokenGate(upstream, lifetime=lifetime) as gate:
        print(f"# {gate.url} -> {upstream}, tokens valid {lifetime:g}s")
        print(f"# token command: {gate.token_command_line()}", flush=True)
        try:
            done.wait()
        except KeyboardInterrupt:
            pass
        print(f"# {gate.stats()}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backends.tokens", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_issue = sub.add_parser("issue", help="print a fresh token from a running gate")
    p_issue.add_argument("--url", required=True, help="the gate's URL, http://127.0.0.1:PORT")
    p_issue.add_argument("--secret-file", required=True, help="file holding the client secret")
    p_issue.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    p_serve = sub.add_parser("serve", help="run a gate in front of an upstream until Ctrl-C")
    p_serve.add_argument("--upstream", required=True, help="http://host:port to protect")
    p_serve.add_argument("--lifetime", type=float, default=10.0, help="token seconds (10)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args.upstream, args.lifetime)
    try:
        token = issue(args.url, args.secret_file, args.timeout)
    except RuntimeError as e:
        print(f"token command: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(token + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
