"""What cloudtrack keeps on this machine for a store (the journal, the read cache): where
(the user's cache folder), under which name (the store's identity), and private to the user."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from cloudtrack.config.redaction import redact_uri

if TYPE_CHECKING:
    from cloudtrack.config import StoreConfig

#: Settings that say which endpoint a URI reached (with the URI, a store's identity).
ENDPOINT_SETTINGS = ("endpoint_url", "emulator_host", "api_endpoint")


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """``<user cache directory>/cloudtrack``, as platformdirs would place it."""
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        base = Path(xdg) / "cloudtrack"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches" / "cloudtrack"
    elif os.name == "nt":
        local = env.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        base = Path(local) / "cloudtrack" / "Cache"
    else:
        base = Path.home() / ".cache" / "cloudtrack"
    return base


def store_identity(config: StoreConfig) -> dict[str, str | None]:
    """What names a store for the journal: its URI and endpoint, secrets removed.  A local
    store is named by its absolute path (``file:./mlruns`` names another store elsewhere)."""
    endpoint = next((str(config.get(name)) for name in ENDPOINT_SETTINGS
                     if config.get(name) is not None), None)
    if config.backend == "file":
        uri = "file://" + "/".join(p for p in (config.container, config.prefix) if p)
    else:
        uri = config.display_uri
    return {"store": uri.rstrip("/"), "endpoint": redact_uri(endpoint) if endpoint else None}


def store_folder(identity: Mapping[str, str | None]) -> str:
    """A folder name for the store: readable, and unique for its identity."""
    digest = hashlib.sha256(json.dumps(dict(identity), sort_keys=True).encode()).hexdigest()
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", str(identity["store"])).strip("-.")[:60]
    return f"{readable}-{digest[:12]}"


def private_dirs(path: Path, top: Path) -> None:
    """Create ``path`` and the folders between ``top``'s parent and it, each 0700 (the cache
    directory above, as the system would make it)."""
    top.parent.mkdir(parents=True, exist_ok=True)
    todo = []
    p = path
    while True:
        todo.append(p)
        if p == top or p.parent == p:
            break
        p = p.parent
    for d in reversed(todo):
        d.mkdir(mode=0o700, exist_ok=True)
        with contextlib.suppress(OSError):  # not ours to change: leave it
            if d.stat().st_uid == os.getuid() and d.stat().st_mode & 0o077:
                d.chmod(0o700)
