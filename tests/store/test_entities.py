"""Entities as records and back (:mod:`cloudtrack.store.entities`, shapes from
:mod:`cloudtrack.store.build`): what a copy writes reads back as the entity it copied."""

from __future__ import annotations

import math

from mlflow.entities import (
    Dataset,
    DatasetInput,
    InputTag,
    LoggedModel,
    LoggedModelInput,
    LoggedModelOutput,
    LoggedModelStatus,
    Metric,
    Param,
    Run,
    RunData,
    RunInfo,
    RunInputs,
    RunOutputs,
    RunTag,
)
from mlflow.entities.model_registry import (
    ModelVersion,
    ModelVersionTag,
    RegisteredModel,
    RegisteredModelAlias,
)

from cloudtrack.store import build, entities, records

T0 = 1_600_000_000_000


def test_a_run_reads_back_as_it_was_written() -> None:
    history = [Metric("loss", v, T0 + i, i) for i, v in enumerate([0.5, float("nan"), 0.2])]
    history += [Metric("acc", 0.9, T0, 0, model_id="m-1", dataset_name="d", dataset_digest="g")]
    info = RunInfo("r" * 32, "7", "ann", "FINISHED", T0, T0 + 9, "deleted", "x", "name")
    run = Run(info, RunData([history[1], history[3]], [Param("p", "1")],
                            [RunTag("mlflow.runName", "name")]),
              RunInputs([DatasetInput(Dataset("d", "g", "local", "src", "s", "p"),
                                      [InputTag("mlflow.data.context", "train")])],
                        [LoggedModelInput("m-1")]),
              RunOutputs([LoggedModelOutput("m-1", 3)]))
    head = entities.run_head_record(run, experiment_id="8", artifact_uri="s3://b/a",
                                    history=history, model_ids={"m-1": "m-2"}, deleted_time=5)
    head = records.parse(records.dumps(head), "test")  # as a reader gets it
    back = entities.run(head)
    assert (back.info.experiment_id, back.info.artifact_uri, head["info"]["deleted_time"]) == \
        ("8", "s3://b/a", 5)
    for field in ("run_id", "user_id", "status", "start_time", "end_time", "lifecycle_stage",
                  "run_name"):
        assert getattr(back.info, field) == getattr(info, field), field
    assert (back.data.params, back.data.tags) == (run.data.params, run.data.tags)
    # The latest points are the ones the run reports (NaN at step 1 here, not MLflow's
    # rule over the history, which would pick 0.2 at step 2), model ids mapped.
    latest = {m.key: m for m in back.data._metric_objs}
    assert math.isnan(latest["loss"].value) and latest["loss"].step == 1
    assert (latest["acc"].model_id, latest["acc"].dataset_name) == ("m-2", "d")
    assert [(d.dataset.name, d.dataset.profile, d.tags[0].value)
            for d in back.inputs.dataset_inputs] == [("d", "p", "train")]
    assert [m.model_id for m in back.inputs.model_inputs] == ["m-2"]
    assert [(m.model_id, m.step) for m in back.outputs.model_outputs] == [("m-2", 3)]


def test_a_new_head_has_no_inputs_outputs_or_tail() -> None:
    info = build.run_info(run_id="r", run_name="n", experiment_id="0", user_id="u",
                          status="RUNNING", start_time=1, end_time=None, artifact_uri="a")
    assert set(build.run_head(info)) == {"info", "params", "tags", "metrics"}


def test_a_logged_model_reads_back_as_it_was_written() -> None:
    model = LoggedModel("3", "m-1", "clf", "x", T0, T0 + 1, "kind", "r1",
                        LoggedModelStatus.READY, "ok", {"t": "1"}, {"p": "2"},
                        [Metric("acc", 0.5, T0, 1, run_id="r1", model_id="m-1")])
    back = entities.logged_model(entities.logged_model_record(
        model, experiment_id="4", artifact_location="s3://b/m", source_run_id="r2"))
    assert (back.experiment_id, back.artifact_location, back.source_run_id) == \
        ("4", "s3://b/m", "r2")
    for field in ("model_id", "name", "creation_timestamp", "last_updated_timestamp",
                  "model_type", "status", "status_message", "tags", "params"):
        assert getattr(back, field) == getattr(model, field), field
    assert [(m.key, m.value, m.run_id) for m in back.metrics] == [("acc", 0.5, "r1")]


def test_registry_records_read_back_and_a_tombstone_hides_its_version() -> None:
    model = RegisteredModel("reg", T0, T0 + 5, "d", tags=[],
                            aliases=[RegisteredModelAlias("champion", 2)])
    model._tags = {"mlflow.prompt.is_prompt": "true", "t": "1"}  # as MLflow builds a prompt
    rec = entities.registered_model_record(model, model_id="abc")
    assert rec["tags"]["mlflow.prompt.is_prompt"] == "true"  # kept: it makes a prompt
    v2 = ModelVersion("reg", 2, T0 + 1, T0 + 2, "v2", "u", "Staging", "runs:/r/m", "r",
                      tags=[ModelVersionTag("k", "v")], run_link="l", model_id="m-1")
    v_rec = entities.model_version_record(v2, storage_location="s3://b/m")
    back = entities.model_version(rec, v_rec)
    for field in ("version", "creation_timestamp", "last_updated_timestamp", "description",
                  "user_id", "current_stage", "source", "run_id", "tags", "run_link",
                  "model_id"):
        assert getattr(back, field) == getattr(v2, field), field
    assert back.aliases == ["champion"]
    assert entities.registered_model(rec, [v_rec]).latest_versions[0].version == 2
    grave = build.tombstone(dict(v_rec), T0 + 9)
    assert build.is_tombstone(grave) and grave["source"] == "REDACTED-SOURCE-PATH"
    assert entities.registered_model(rec, [grave]).latest_versions == []
