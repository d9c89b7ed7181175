"""``--verify``: compare the source with the destination object by object.

Per experiment: its copy exists, with the same tags and lifecycle stage.  Per run: its copy
exists, with the same fingerprint (status, times, name, user, params, tags, latest metrics),
the same digest of every metric point, and the same artifact files with the same sizes.  Per
registered model: the same live version numbers, and per version the same stage, tags,
description and aliases.  Every difference is one line of the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from mlflow.entities import Experiment, Run

from cloudtrack.migrate import artifacts
from cloudtrack.migrate.model import MIGRATION_TAGS, history_digest, run_fingerprint
from cloudtrack.migrate.source import Source

if TYPE_CHECKING:
    from cloudtrack.migrate.runner import Migration


def verify(migration: Migration, experiments: Sequence[Experiment]) -> list[str]:
    """Every difference between what ``migration`` read and what its destination holds."""
    dest = migration.dest
    dest_source = Source(dest.endpoint)
    by_name = {e.name: e for e in dest.experiments()}
    differences: list[str] = []
    for exp in experiments:
        copy = by_name.get(exp.name)
        if copy is None:
            differences.append(f"experiment {exp.name!r} ({exp.experiment_id}) is missing")
            continue
        if copy.lifecycle_stage != exp.lifecycle_stage:
            differences.append(f"experiment {exp.name!r}: lifecycle stage "
                               f"{copy.lifecycle_stage!r}, source {exp.lifecycle_stage!r}")
        if _tags(copy.tags) != _tags(exp.tags):
            differences.append(f"experiment {exp.name!r}: tags differ")
        copied = dest.copied_runs(copy.experiment_id)

        def one(run: Run, copied: dict = copied) -> list[str]:  # type: ignore[type-arg]
            return _run(migration, dest_source, run, copied.get(run.info.run_id))

        with ThreadPoolExecutor(migration.options.workers,
                                thread_name_prefix="cloudtrack-verify") as pool:
            for page in migration.source.runs(exp.experiment_id):
                for found in pool.map(one, page):
                    differences.extend(found)
    if migration.options.registry:
        differences.extend(_registry(migration))
    return differences


def _tags(tags: object) -> dict[str, str]:
    items = tags.items() if isinstance(tags, dict) else ((t.key, t.value) for t in tags or [])  # type: ignore[attr-defined]
    return {k: v for k, v in items if k not in MIGRATION_TAGS}


def _run(migration: Migration, dest_source: Source, run: Run, copy: object) -> list[str]:
    what = f"run {run.info.run_id} ({run.info.run_name})"
    if copy is None:
        return [f"{what} is missing"]
    dest_run_id = copy.run_id  # type: ignore[attr-defined]
    out = []
    if copy.fingerprint != run_fingerprint(run):  # type: ignore[attr-defined]
        out.append(f"{what}: status, times, params, tags or latest metrics differ")
    dest_run = migration.dest.endpoint.tracking.get_run(dest_run_id)
    if history_digest(migration.source.history(run)) != history_digest(dest_source.history(dest_run)):
        out.append(f"{what}: metric points differ")
    src_files = artifacts.list_tree(artifacts.repository(run.info.artifact_uri,
                                                         migration.src.tracking_uri))
    dest_files = artifacts.list_tree(artifacts.repository(
        dest_run.info.artifact_uri, migration.dest.endpoint.tracking_uri))
    if src_files != dest_files:
        missing = sorted(set(src_files) - set(dest_files))
        other = sorted(p for p in set(src_files) & set(dest_files) if src_files[p] != dest_files[p])
        detail = "; ".join(x for x in (
            f"missing {', '.join(missing[:5])}" if missing else "",
            f"different size {', '.join(other[:5])}" if other else "",
            "extra files" if set(dest_files) - set(src_files) else "") if x)
        out.append(f"{what}: artifacts differ ({detail})")
    return out


def _aliases(model: object) -> dict[str, str]:
    return {a: str(n) for a, n in (getattr(model, "aliases", None) or {}).items()}


def _registry(migration: Migration) -> list[str]:
    out = []
    have = migration.dest.registered_models()
    for model in migration.source.registered_models():
        copy = have.get(model.name)
        if copy is None:
            out.append(f"registered model {model.name!r} is missing")
            continue
        dest_model, dest_versions = copy
        if (model.description or "") != (dest_model.description or ""):
            out.append(f"registered model {model.name!r}: description differs")
        if _tags(model.tags) != _tags(dest_model.tags):
            out.append(f"registered model {model.name!r}: tags differ")
        # Aliases compared on the model: version searches answer them on some stores only, and
        # alias targets are numbers on some, strings on others.
        if _aliases(model) != _aliases(dest_model):
            out.append(f"registered model {model.name!r}: aliases {_aliases(dest_model)}, "
                       f"source {_aliases(model)}")
        versions = {int(v.version): v for v in migration.source.model_versions(model)}
        dest_by_number = {int(v.version): v for v in dest_versions}
        if set(versions) != set(dest_by_number):
            out.append(f"registered model {model.name!r}: versions {sorted(dest_by_number)}, "
                       f"source {sorted(versions)}")
        for n, v in versions.items():
            d = dest_by_number.get(n)
            if d is None:
                continue
            if (v.current_stage, v.description or "", _tags(v.tags)) != \
                    (d.current_stage, d.description or "", _tags(d.tags)):
                out.append(f"registered model {model.name!r} version {n}: stage, description "
                           "or tags differ")
    return out
