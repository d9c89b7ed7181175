"""A source store filled through MLflow's own client with everything a migration must carry:
experiments (one deleted), runs with distinctive times, NaN and ±inf points over many steps,
system tags, params, datasets, a deleted run, a run still running, artifacts in folders, a
logged model with params, metrics and artifacts, a registered model whose version 2 is
deleted, aliases, stages, and a prompt.  :func:`snapshot` reads any store back into plain
data with ids kept, so two stores compare with ``==``."""

from __future__ import annotations

import math
import os
import tempfile
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import (
    Dataset,
    DatasetInput,
    InputTag,
    LoggedModelOutput,
    Metric,
    Param,
    RunTag,
    ViewType,
)

#: A fixed moment (2021-03-04), far from "now", so a copy that kept no time cannot pass.
T0 = 1_614_816_000_000
MODEL = "migrated-model"
PROMPT = "migrated-prompt"


def populate(tracking_uri: str, *, runs: int = 3, points: int = 25) -> dict[str, Any]:
    """Fill the store at ``tracking_uri``; returns the ids the tests name."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    ids: dict[str, Any] = {}
    exp = client.create_experiment("vision", tags={"team": "cv", "mlflow.note.content": "n"})
    other = client.create_experiment("to-delete", tags={"gone": "yes"})
    ids["experiment"], ids["deleted_experiment"] = exp, other
    ids["runs"] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            run = client.create_run(exp, start_time=T0 + i * 1000,
                                    tags={"mlflow.user": f"user{i}", "mlflow.source.name": "t.py",
                                          "kind": "train"},
                                    run_name=f"run-{i}")
            run_id = run.info.run_id
            ids["runs"].append(run_id)
            client.log_batch(run_id, params=[Param("lr", str(0.1 * (i + 1))), Param("depth", "4")],
                             tags=[RunTag("note", f"r{i}")])
            metrics = [Metric("loss", 1.0 / (s + 1), T0 + i * 1000 + s, s) for s in range(points)]
            metrics += [Metric("odd", v, T0 + 5 + n, n) for n, v in
                        enumerate([math.nan, math.inf, -math.inf, 0.5])]
            client.log_batch(run_id, metrics=metrics)
            client.log_inputs(run_id, [DatasetInput(
                Dataset(name="digits", digest=f"d{i}", source_type="local",
                        source='{"uri": "/data"}', schema='{"x": "int"}', profile='{"n": 10}'),
                tags=[InputTag("mlflow.data.context", "training")])])
            folder = os.path.join(tmp, f"art{i}")
            os.makedirs(os.path.join(folder, "plots"))
            with open(os.path.join(folder, "notes.txt"), "w") as f:
                f.write(f"run {i}\n")
            with open(os.path.join(folder, "plots", "curve.bin"), "wb") as f:
                f.write(os.urandom(2048 + i))
            client.log_artifacts(run_id, folder)
            client.set_terminated(run_id, "FINISHED", end_time=T0 + i * 1000 + 500)
        first = ids["runs"][0]
        model = client.create_logged_model(exp, name="clf", source_run_id=first,
                                           tags={"stage": "dev"}, params={"alpha": "0.5"},
                                           model_type="sklearn")
        ids["model"] = model.model_id
        client.log_metric(first, "acc", 0.9, timestamp=T0 + 9, step=1, model_id=model.model_id)
        client.log_outputs(first, [LoggedModelOutput(model.model_id, 1)])
        mdir = os.path.join(tmp, "model")
        os.makedirs(mdir)
        with open(os.path.join(mdir, "MLmodel"), "w") as f:
            f.write("flavors: {}\n")
        client.log_model_artifacts(model.model_id, mdir)
        client.finalize_logged_model(model.model_id, "READY")
    deleted = client.create_run(exp, start_time=T0 + 90_000, run_name="deleted-run")
    client.log_metric(deleted.info.run_id, "loss", 0.3, timestamp=T0 + 90_001, step=0)
    client.set_terminated(deleted.info.run_id, "FAILED", end_time=T0 + 90_002)
    client.delete_run(deleted.info.run_id)
    running = client.create_run(exp, start_time=T0 + 95_000, run_name="still-running")
    client.log_metric(running.info.run_id, "loss", 0.7, timestamp=T0 + 95_001, step=0)
    ids["deleted_run"], ids["running_run"] = deleted.info.run_id, running.info.run_id
    client.delete_experiment(other)

    client.create_registered_model(MODEL, tags={"owner": "cv"}, description="the classifier")
    for n in range(3):
        client.create_model_version(MODEL, f"runs:/{ids['runs'][n % runs]}/model",
                                    run_id=ids["runs"][n % runs], tags={"n": str(n + 1)},
                                    description=f"v{n + 1}")
    client.delete_model_version(MODEL, "2")
    client.transition_model_version_stage(MODEL, "1", "Production")
    client.set_registered_model_alias(MODEL, "champion", "3")
    client.register_prompt(PROMPT, "Hello {{name}}", commit_message="first")
    client.register_prompt(PROMPT, "Hi {{name}}!", commit_message="second")
    return ids


def snapshot(tracking_uri: str, *, with_ids: bool = True) -> dict[str, Any]:
    """Everything a user can read back through MLflow's client, as plain data.

    ``with_ids=False`` leaves out run and logged-model ids and the times a server sets itself
    (for a copy in an MLflow server, which chooses its own)."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    out: dict[str, Any] = {"experiments": {}, "registry": {}}
    for exp in client.search_experiments(view_type=ViewType.ALL):
        if exp.name == "Default":
            continue
        runs = {}
        for run in client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL):
            history = {key: sorted((m.timestamp, m.step, _v(m.value))
                                   for m in client.get_metric_history(run.info.run_id, key))
                       for key in run.data.metrics}
            tags = {k: v for k, v in run.data.tags.items() if not k.startswith("cloudtrack.")}
            artifacts = sorted(_walk(client, run.info.run_id))
            name = run.info.run_id if with_ids else run.info.run_name
            runs[name] = {
                "name": run.info.run_name, "status": run.info.status,
                "start": run.info.start_time, "end": run.info.end_time,
                "user": run.info.user_id, "stage": run.info.lifecycle_stage,
                "params": run.data.params, "tags": tags, "history": history,
                "datasets": sorted((d.dataset.name, d.dataset.digest, d.dataset.source)
                                   for d in run.inputs.dataset_inputs),
                "artifacts": artifacts,
            }
        models = {}
        for m in client.search_logged_models([exp.experiment_id]):
            models[m.model_id if with_ids else m.name] = {
                "name": m.name, "params": m.params,
                "tags": {k: v for k, v in m.tags.items() if not k.startswith("cloudtrack.")},
                "status": str(m.status), "type": m.model_type,
                "metrics": sorted((x.key, _v(x.value), x.step) for x in m.metrics or []),
            }
        out["experiments"][exp.name] = {
            "id": exp.experiment_id if with_ids else None, "stage": exp.lifecycle_stage,
            "tags": exp.tags, "created": exp.creation_time if with_ids else None,
            "runs": runs, "models": models}
    for rm in client.search_registered_models():
        versions = {int(v.version): (v.current_stage, v.description,
                                     {k: t for k, t in v.tags.items()
                                      if not k.startswith("cloudtrack.")},
                                     sorted(v.aliases or []))
                    for v in client.search_model_versions(f"name='{rm.name}'")}
        # A SQL store answers alias targets as numbers, REST as strings.
        out["registry"][rm.name] = {
            "description": rm.description,
            "tags": {k: v for k, v in rm.tags.items() if not k.startswith("cloudtrack.")},
            "aliases": {a: str(n) for a, n in (rm.aliases or {}).items()},
            "versions": versions}
    prompt = client.load_prompt(f"prompts:/{PROMPT}/2")
    out["prompt"] = (prompt.template, prompt.version, prompt.commit_message)
    return out


def _v(value: float) -> Any:
    return "nan" if math.isnan(value) else value


def _walk(client: MlflowClient, run_id: str, path: str | None = None) -> list[tuple[str, int]]:
    out = []
    for f in client.list_artifacts(run_id, path):
        if f.is_dir:
            out += _walk(client, run_id, f.path)
        else:
            out.append((f.path, f.file_size))
    return out
