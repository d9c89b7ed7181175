"""The doctor of a local directory store (``file:`` URIs and plain paths): no network, so the
checks are the directory itself — who serves it (cloudtrack, or MLflow's FileStore when it
already holds FileStore data), whether it exists or can be created, and the access probes."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

from cloudtrack.blobs.local import LocalBlobs
from cloudtrack.config import StoreConfig
from cloudtrack.doctor.core import Probe, with_timeouts
from cloudtrack.doctor.store import AccessFix, Finding, check_marker, probe_access
from cloudtrack.errors import ContainerNotFound, PermissionDenied
from cloudtrack.mlflow_plugin import is_mlflow_file_store

#: Free space below this is a warning: artifacts and models fill a disk quickly.
LOW_SPACE = 1 << 30


def diagnose(p: Probe, config: StoreConfig) -> None:
    root = config.container
    if is_mlflow_file_store(root):
        p.ok("config.store", "config",
             f"{root} holds MLflow FileStore data, so MLflow's own FileStore serves it "
             "(cloudtrack serves only new or cloudtrack directories)")
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
    check_marker(p, blobs)
    _space(p, root)


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
