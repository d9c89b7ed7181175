"""Where every record lives inside a store: the key names of the storage format, in one place.

Documented in docs/format.md.  All keys are relative to the store's root (bucket + prefix).
Identifiers reaching this module were already validated by MLflow's validators, which refuse
anything that could climb out of a folder; names are encoded so they never form a path.
"""

from __future__ import annotations

import hashlib
import urllib.parse

FORMAT = "cloudtrack"
FORMAT_VERSION = 1

MARKER = "cloudtrack.json"
EXPERIMENTS = "experiments/"
EXPERIMENT_NAMES = "experiment-names/"
RUN_INDEX = "runs/"
HEADS = "heads/"
HISTORY = "history/"
LOGGED_MODELS = "logged-models/"
LOGGED_MODEL_INDEX = "logged-model-index/"
SNAPSHOTS = "snapshots/"
INDEX = "index/"
#: Every experiment's head pages, one folder each.
HEAD_PAGES = f"{INDEX}heads/"
REGISTERED_MODELS = "registry/models/"
MODEL_VERSIONS = "registry/versions/"
ARTIFACTS = "artifacts"

DEFAULT_EXPERIMENT_ID = "0"


def encode_name(name: str) -> str:
    """A name as one key segment: percent-encoded, or hashed when that would be too long."""
    quoted = urllib.parse.quote(name, safe="")
    if len(quoted) <= 300 and quoted not in (".", ".."):
        return quoted
    return "sha256-" + hashlib.sha256(name.encode("utf-8")).hexdigest()


def experiment(exp_id: str) -> str:
    return f"{EXPERIMENTS}{exp_id}.json"


def experiment_name(name: str) -> str:
    return f"{EXPERIMENT_NAMES}{encode_name(name)}"


def run_index(run_id: str) -> str:
    return f"{RUN_INDEX}{run_id}.json"


def heads(exp_id: str) -> str:
    return f"{HEADS}{exp_id}/"


def head(exp_id: str, run_id: str) -> str:
    return f"{HEADS}{exp_id}/{run_id}.json"


def head_snapshot(exp_id: str) -> str:
    """A gzip'd cache of an experiment's run heads, each with the version it was read at."""
    return f"{SNAPSHOTS}heads/{exp_id}.json.gz"


def head_pages(exp_id: str) -> str:
    """The experiment's head pages (:mod:`cloudtrack.store.pages`), written by writers."""
    return f"{HEAD_PAGES}{exp_id}/"


def experiment_pages() -> str:
    """The experiment records' pages (:mod:`cloudtrack.store.pages`)."""
    return f"{INDEX}experiments/"


def logged_model_pages(exp_id: str) -> str:
    """The experiment's logged-model pages (:mod:`cloudtrack.store.pages`)."""
    return f"{INDEX}logged-models/{exp_id}/"


def registry_pages(kind: str) -> str:
    """The registry's pages of ``kind``: ``models`` or ``versions``."""
    return f"{INDEX}registry/{kind}/"


def history(run_id: str) -> str:
    return f"{HISTORY}{run_id}/"


def history_batch(run_id: str, batch: str) -> str:
    return f"{HISTORY}{run_id}/{batch}.json"


def copied_history_batch(run_id: str, index: int) -> str:
    """The ``index``-th history batch of a run written whole by a copy (``cloudtrack migrate``):
    named by its place, so writing the run again overwrites its batches instead of adding."""
    return history_batch(run_id, f"copy-{index:06d}")


def logged_models(exp_id: str) -> str:
    return f"{LOGGED_MODELS}{exp_id}/"


def logged_model(exp_id: str, model_id: str) -> str:
    return f"{LOGGED_MODELS}{exp_id}/{model_id}.json"


def logged_model_index(model_id: str) -> str:
    return f"{LOGGED_MODEL_INDEX}{model_id}.json"


def id_from_key(key: str) -> str:
    """``heads/3/abc.json`` -> ``abc``."""
    return key.rsplit("/", 1)[-1].removesuffix(".json")


def registered_model(name: str) -> str:
    return f"{REGISTERED_MODELS}{encode_name(name)}.json"


def model_versions(model_key: str) -> str:
    return f"{MODEL_VERSIONS}{model_key}/"


def model_version(model_key: str, version: int) -> str:
    return f"{MODEL_VERSIONS}{model_key}/{version:010d}.json"
