"""Reading ahead in an ``mlflow server`` worker, so the UI's first pages need no cold read.

A process that has not read an experiment yet reads every head of it on its first search: a
LIST per 1,000 runs, a GET per head page (a few hundred runs each), and the decoding of them
all.  The MLflow server answers the UI's first page of 100 runs from its database's index.
So a worker of ``mlflow server`` on one of our stores, once its tracking store is built
(:mod:`cloudtrack.mlflow_plugin`), reads the heads of the experiments written to most
recently, in the background, up to ``CLOUDTRACK_SERVER_WARMUP`` runs; its registry store reads
the registry's pages.  A request that comes meanwhile for an experiment being read waits for
that read instead of doing it again beside it (``SearchMixin._candidates_of``); every request
still lists the heads, so nothing read ahead is ever used unless the store still holds it at
that version.

What is read ahead is only what head pages hold: an experiment with no pages (a store written
before them) would cost a GET per run and is left to the request that wants it.  Experiments go
newest first, by their newest page (a page is rewritten whenever a run of the experiment
ends); one that would take the budget past its end is skipped, its runs estimated from its
pages' bytes.  One line on stderr (the server's log) says what was read, if anything, or why the reading
stopped.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from cloudtrack.config.variables import CLOUDTRACK_SERVER_WARMUP
from cloudtrack.errors import ConfigError
from cloudtrack.store import layout

#: Runs read ahead when the variable is unset (about 7 KB of memory each once read).
DEFAULT_RUNS = 20_000
#: Compressed bytes a run takes in a head page, about: an experiment's runs are estimated from
#: its pages' bytes (a run of 10 params, 10 metrics and 5 tags takes about 270; larger runs,
#: which take more memory too, count as more).
ENTRY_BYTES = 250
#: Experiments considered, newest first.
MAX_EXPERIMENTS = 1000


def budget(environ: Mapping[str, str] | None = None) -> int:
    """Runs to read ahead, from ``CLOUDTRACK_SERVER_WARMUP``: a count, ``0``/``off`` for none."""
    env = os.environ if environ is None else environ
    raw = env.get(CLOUDTRACK_SERVER_WARMUP.name, "").strip()
    if not raw or raw.lower() in ("on", "true", "yes"):
        return DEFAULT_RUNS
    if raw.lower() in ("off", "false", "no"):
        return 0
    try:
        runs = int(raw.replace("_", "").replace(",", ""))
    except ValueError:
        runs = -1
    if runs < 0:
        raise ConfigError(f"{CLOUDTRACK_SERVER_WARMUP.name}={raw!r} is not a number of runs; "
                          f"give one such as {DEFAULT_RUNS}, or 0 (or off) to read nothing ahead")
    return runs


def _say(message: str) -> None:
    print(f"cloudtrack: {message}", file=sys.stderr, flush=True)


def tracking(store: Any, environ: Mapping[str, str] | None = None) -> None:
    """Read ahead the heads of ``store``'s newest experiments (see the module's docstring).
    Never raises: a failure is one line in the log, and the requests read what they need."""
    try:
        runs = budget(environ)
    except ConfigError as e:
        _say(f"{e}; reading nothing ahead")
        return
    if runs == 0:
        return
    t0 = time.monotonic()
    read_runs = read_exps = 0
    try:
        for exp_id, estimate in _newest_experiments(store):
            if estimate > runs - read_runs:
                continue
            read_runs += store.read_ahead(exp_id)
            read_exps += 1
            if read_runs >= runs:
                break
    except Exception as e:  # a cache being filled: the requests read what they need
        if not _closed(store):
            _say(f"reading ahead for the UI stopped after {read_runs:,} runs of {read_exps} "
                 f"experiment(s): {e}")
        return
    if read_exps:
        from cloudtrack.tracking.search import freeze_what_was_read

        freeze_what_was_read()
        _say(f"read {read_runs:,} runs of {read_exps} experiment(s) ahead for the UI in "
             f"{time.monotonic() - t0:.2f} s ({CLOUDTRACK_SERVER_WARMUP.name}={runs}; 0 "
             f"turns this off)")


def registry(store: Any, environ: Mapping[str, str] | None = None) -> None:
    """Read the registry's models and versions ahead (their pages: a few requests)."""
    try:
        if budget(environ) == 0:
            return
        store.search_registered_models(max_results=1000)
    except Exception as e:  # as above
        if not _closed(store):
            _say(f"reading the model registry ahead for the UI failed: {e}")


def _newest_experiments(store: Any) -> list[tuple[str, int]]:
    """(experiment id, about how many runs its pages hold) of the active experiments with
    head pages, newest page first."""
    from mlflow.entities import ViewType

    active = {e.experiment_id for e in store.search_experiments(
        view_type=ViewType.ACTIVE_ONLY, max_results=MAX_EXPERIMENTS)}
    newest: dict[str, float] = {}
    size: dict[str, int] = {}
    folder = layout.HEAD_PAGES
    for info in store.blobs.list(folder):
        exp_id = info.key[len(folder):].split("/", 1)[0]
        if exp_id not in active:
            continue
        newest[exp_id] = max(newest.get(exp_id, 0.0), info.modified.timestamp())
        size[exp_id] = size.get(exp_id, 0) + info.size
    order = sorted(newest, key=lambda e: newest[e], reverse=True)
    return [(e, size[e] // ENTRY_BYTES) for e in order]


def _closed(store: Any) -> bool:
    """Whether the store was closed (built early for other arguments, or at exit)."""
    pool = getattr(store, "_pool", None)
    return bool(getattr(pool, "_shutdown", False))
