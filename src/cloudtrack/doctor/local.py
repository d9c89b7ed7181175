"""The doctor of a local directory store (``file:`` URIs and plain paths): no network, so the
checks are the directory itself — who serves it (cloudtrack, or MLflow's FileStore when it
already holds FileStore data), whether it exists or can be created, and the access probes."""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Sequence

from cloudtrack.blobs.local import LocalBlobs
from cloudtrack.config import StoreConfig
from cloudtrack.doctor.core import Probe, with_timeouts
from cloudtrack.doctor.store import AccessFix, Finding, check_marker, probe_access
from cloudtrack.errors import ContainerNotFound, PermissionDenied
from cloudtrack.mlflow_plugin import is_mlflow_file_store

#: MLflow's switch that lets its FileStore open at all (recent MLflow refuses it by default).
ALLOW_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"
#: Free space below this is a warning: artifacts and models fill a disk quickly.
LOW_SPACE = 1 << 30


def diagnose(p: Probe, config: StoreConfig) -> None:
    root = config.container
    file_store = is_mlflow_file_store(root)
    if file_store:
        _file_store(p, config)
    if not os.path.isdir(root):
        if os.path.exists(root):
            p.fail("authz.container", "authz", "config-invalid",
                   f"{root} exists but is not a directory",
                   "point the URI at a directory (or a path that does not exist yet)")
        parent = _existing_parent(root)
        if not os.access(parent, os.W_OK | os.X_OK):
            p.fail("authz.container", "authz", "permission-denied",
                   f"{root} does not exist, and {parent} is not writable by this user, so it "
                   "cannot be created", f"create it with the right owner: mkdir -p {root} && "
                   f"chown $USER {root}; or choose a writable path")
        p.ok("authz.container", "authz",
             f"{root} does not exist yet; it will be created on first use ({parent} is "
             "writable)")
        _space(p, parent)
        return
    blobs = LocalBlobs(with_timeouts(config, p.timeout))
    p.ok("authz.container", "authz", f"{root} is a directory")
    probe_access(p, blobs, classify=_classify, access_fix=_access_fix(root), where=root)
    if not file_store:  # its folders are MLflow's, not a cloudtrack store's
        check_marker(p, blobs)
    _space(p, root)


def _file_store(p: Probe, config: StoreConfig) -> None:
    """A directory of MLflow's legacy FileStore (``<experiment id>/meta.yaml``): cloudtrack's
    plugin hands it to MLflow's own FileStore (so it never mixes the two formats), which
    refuses to open unless ``MLFLOW_ALLOW_FILE_STORE`` is true.  A failure, not "ok": every
    logging call would end in MLflow's "maintenance mode" error."""
    root = config.container
    shown = config.display_uri
    what = (f"{root} is an MLflow FileStore (MLflow's legacy folder format, <experiment "
            f"id>/meta.yaml: it holds {_evidence(root)}), not a cloudtrack store: cloudtrack "
            "does not log into a FileStore and leaves it to MLflow's own FileStore")
    new = f"{root.rstrip(os.sep)}-cloudtrack"
    move = (f"move its runs into a cloudtrack store and log there: `cloudtrack migrate "
            f"{shlex.quote(shown)} {shlex.quote(new)}`, then MLFLOW_TRACKING_URI={shlex.quote(new)} (any "
            "store URI works as the destination, s3://… included); or log into a new, empty "
            "directory")
    raw = p.environ.get(ALLOW_FILE_STORE)
    if raw is None or raw.lower() in ("false", "0"):
        p.fail("config.store", "config", "config-invalid",
               f"{what}, which the installed MLflow refuses to open: logging there fails with "
               "\"The filesystem tracking backend (e.g., './mlruns') is in maintenance mode\""
               + (f" ({ALLOW_FILE_STORE}={raw})" if raw is not None else ""), move)
    if raw.lower() not in ("true", "1"):
        p.fail("config.store", "config", "config-invalid",
               f"{what}; MLflow refuses {ALLOW_FILE_STORE}={raw!r} (it must be one of true, "
               "false, 1, 0), so logging there fails", move)
    p.warn("config.store", "config", "config-invalid",
           f"{what}, which serves it because {ALLOW_FILE_STORE}={raw}: logging works, "
           "but the FileStore is in maintenance mode and gets no new MLflow features; the "
           "checks below are only of the directory's access", move)


def _evidence(root: str) -> str:
    """What made the directory a FileStore (mlflow_plugin.is_mlflow_file_store), for the user."""
    try:
        ids = sorted((e for e in os.listdir(root)
                      if e.isdigit() and os.path.exists(os.path.join(root, e, "meta.yaml"))),
                     key=int)
    except OSError:
        ids = []
    if ids:
        more = f" and {len(ids) - 1} more experiment folder(s)" if len(ids) > 1 else ""
        return os.path.join(ids[0], "meta.yaml") + more
    return "a .trash folder"


def _existing_parent(path: str) -> str:
    parent = os.path.dirname(path.rstrip(os.sep)) or os.sep
    while not os.path.exists(parent) and parent != os.sep:
        parent = os.path.dirname(parent)
    return parent


def _space(p: Probe, path: str) -> None:
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return
    if free < LOW_SPACE:
        p.warn("consistency.space", "consistency", "server-error",
               f"only {free / (1 << 20):.0f} MiB free on the disk holding {path}",
               "free disk space or move the store")
    else:
        p.ok("consistency.space", "consistency",
             f"{free / (1 << 30):.1f} GiB free on the disk holding {path}")


def _classify(e: BaseException, op: str) -> Finding:
    if isinstance(e, ContainerNotFound):
        return Finding("authz", "container-not-found", str(e), "create the directory",
                       id="authz.container", stop=True)
    if isinstance(e, PermissionDenied):
        return Finding("authz", "permission-denied", f"{op}: {e}")
    return Finding("authz", "permission-denied", f"{op} failed: {e}",
                   "check the directory's owner, mode and free space")


def _access_fix(root: str) -> AccessFix:
    def fix(denied: Sequence[str]) -> str:
        return (f"this user may not {', '.join(denied)} in {root}: make it the owner "
                f"(`sudo chown -R $USER {root}`) or grant access (`chmod -R u+rwX {root}`)")
    return fix
