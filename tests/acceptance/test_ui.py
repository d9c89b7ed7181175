"""The real MLflow REST API and UI served by ``mlflow server`` from a cloudtrack store.

On every backend MLflow first logs straight into a fresh store (no server); then two
``mlflow server`` processes are started side by side on that same store.  Both must serve what
was logged (runs and the model registry), and a run or a model version created through one
must be visible through the other.  On S3 the real UI is then driven in headless Chromium
(Debian's ``/usr/bin/chromium``; ``.ci/run`` installs it; ``CLOUDTRACK_SKIP_UI=1`` skips the UI
tests on a developer's machine).

Start-up dominates the run time (each server imports MLflow twice), so one module fixture
launches every server of every selected backend at once and their start-ups overlap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

import backends
from backends.mlflow.service import SERVER_ENV, MlflowServer
from tests.fixtures.services import service

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
#: The UI runs on one backend only: it checks MLflow's pages, not the blob layer again.
UI_BACKEND = "s3"
#: Generous but bounded: two cores, shared with the rest of the suite.
STARTUP_TIMEOUT = 300.0
UI_TIMEOUT_MS = 60_000

#: Registered with versions 1 (stage Production) and 2 (alias "champion").
MODEL = "ui-model"
LOSS = [round(1.0 / (step + 1), 6) for step in range(10)]

#: Runs in a subprocess with MLFLOW_TRACKING_URI set to the store: plain MLflow, no server.
LOG_DATA = f"""
import json, mlflow, numpy
from sklearn.linear_model import LinearRegression
experiment = mlflow.set_experiment("ui-demo")
with mlflow.start_run(run_name="ui-run") as run:
    mlflow.log_param("lr", 0.01)
    for step, loss in enumerate({LOSS!r}):
        mlflow.log_metric("loss", loss, step=step)
    mlflow.set_tag("team", "cloudtrack")
    mlflow.log_input(mlflow.data.from_numpy(numpy.arange(10.0), name="ui-data"),
                     context="training")
# The registry: two versions of one model, from a run of their own.  Not from "ui-run":
# log_model copies the run's step-0 metrics onto each new model, and cloudtrack (unlike
# MLflow's SQL store) keeps those copies as extra points of the run's metric history.
mlflow.set_experiment("ui-models")
with mlflow.start_run(run_name="ui-model-run") as model_run:
    x = numpy.arange(10.0).reshape(-1, 1)
    model = LinearRegression().fit(x, 2 * x.ravel())
    for _ in range(2):
        # Fixed requirements spare MLflow a subprocess inferring them.
        mlflow.sklearn.log_model(model, name="model", registered_model_name={MODEL!r},
                                 serialization_format="cloudpickle",
                                 pip_requirements=["scikit-learn"])
client = mlflow.MlflowClient()
client.transition_model_version_stage({MODEL!r}, 1, "Production")
client.set_registered_model_alias({MODEL!r}, "champion", 2)
print(json.dumps({{"experiment_id": experiment.experiment_id, "run_id": run.info.run_id,
                  "model_run_id": model_run.info.run_id}}))
"""


@dataclass
class Served:
    """One fresh store with the demo data, and two servers on it."""

    backend: str
    uri: str
    env: dict[str, str]
    experiment_id: str = ""
    run_id: str = ""
    model_run_id: str = ""
    servers: list[MlflowServer] = field(default_factory=list)
    error: str = ""


def _wanted_backends(session: pytest.Session, module: Any) -> list[str]:
    """The backends the selected tests of this module need (``-k local`` starts no S3)."""
    wanted: set[str] = set()
    for item in session.items:
        if getattr(item, "module", None) is not module:
            continue
        fixtures = getattr(item, "fixturenames", ())
        callspec = getattr(item, "callspec", None)
        if "served" in fixtures and callspec is not None:
            wanted.add(callspec.params["served"])
        if "ui_served" in fixtures and not _ui_skipped():
            wanted.add(UI_BACKEND)
    return [b for b in backends.STORAGE_SERVICES if b in wanted]


def _client_env(s: Served) -> dict[str, str]:
    return {**os.environ, **SERVER_ENV, **s.env, "MLFLOW_TRACKING_URI": s.uri,
            "GIT_PYTHON_REFRESH": "quiet"}


@pytest.fixture(scope="module")
def served_all(request: pytest.FixtureRequest) -> Iterator[dict[str, Served]]:
    started: dict[str, Served] = {}
    loggers: dict[str, subprocess.Popen[str]] = {}
    try:
        for name in _wanted_backends(request.session, request.module):
            try:
                svc = service(name)
                s = Served(name, svc.new_store(), dict(svc.env))
            except Exception as e:  # one missing emulator fails its own tests only
                started[name] = Served(name, "", {}, error=f"{name} service did not start: {e!r}")
                continue
            started[name] = s
            loggers[name] = subprocess.Popen(
                [sys.executable, "-c", LOG_DATA], env=_client_env(s), stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
            # Launched while the data is still being logged, so a server and a client may
            # well initialise the fresh store at the same time.
            for _ in range(2):
                server = MlflowServer(s.uri, f"{s.uri}/artifacts", extra_env=s.env,
                                      startup_timeout=STARTUP_TIMEOUT)
                s.servers.append(server)
                server.launch()
        for name, proc in loggers.items():
            s = started[name]
            try:
                out, err = proc.communicate(timeout=STARTUP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                s.error = f"logging into {s.uri} took over {STARTUP_TIMEOUT:.0f}s: {err[-2000:]}"
                continue
            if proc.returncode != 0:
                s.error = f"logging into {s.uri} failed ({proc.returncode}):\n{err[-3000:]}"
                continue
            ids = json.loads(out.strip().splitlines()[-1])
            s.experiment_id, s.run_id = ids["experiment_id"], ids["run_id"]
            s.model_run_id = ids["model_run_id"]
        for s in started.values():
            for server in s.servers:
                try:
                    server.wait_ready()
                except Exception as e:
                    s.error = s.error or f"mlflow server on {s.uri} did not start: {e}"
        yield started
    finally:
        for proc in loggers.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        for s in started.values():
            for server in s.servers:
                server.stop()


def _ready(served_all: dict[str, Served], backend: str) -> Served:
    s = served_all.get(backend)
    if s is None:
        pytest.fail(f"backend {backend} was not prepared (selection logic of served_all)")
    if s.error:
        pytest.fail(s.error)
    return s


@pytest.fixture(params=backends.STORAGE_SERVICES)
def served(request: pytest.FixtureRequest, served_all: dict[str, Served]) -> Served:
    return _ready(served_all, request.param)


# -- REST ------------------------------------------------------------------------------------

def api(server: MlflowServer, method: str, path: str, body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None, prefix: str = "/api/2.0/mlflow/") -> Any:
    r = requests.request(method, f"{server.url}{prefix}{path}", json=body, params=params,
                         timeout=60)
    assert r.status_code == 200, (
        f"{method} {path} on {server.url} answered {r.status_code}: {r.text[:1000]}\n"
        f"server log ends with:\n{server.log_tail(2000)}")
    return r.json()


def test_both_servers_serve_what_mlflow_logged(served: Served) -> None:
    for server in served.servers:
        names = [e["name"] for e in api(server, "POST", "experiments/search",
                                        {"max_results": 100})["experiments"]]
        assert "ui-demo" in names and "Default" in names, names

        runs = api(server, "POST", "runs/search",
                   {"experiment_ids": [served.experiment_id]}).get("runs", [])
        assert [r["info"]["run_id"] for r in runs] == [served.run_id]
        run = runs[0]
        assert run["info"]["run_name"] == "ui-run"
        assert run["info"]["status"] == "FINISHED"
        assert {p["key"]: p["value"] for p in run["data"]["params"]} == {"lr": "0.01"}
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert tags["team"] == "cloudtrack"
        [loss] = run["data"]["metrics"]
        assert (loss["key"], loss["step"], loss["value"]) == ("loss", 9, LOSS[9])

        history = api(server, "GET", "metrics/get-history",
                      params={"run_id": served.run_id, "metric_key": "loss"})["metrics"]
        assert sorted((m["step"], m["value"]) for m in history) == list(enumerate(LOSS))

        # What the UI's charts and dataset filter call.
        bulk = api(server, "GET", "metrics/get-history-bulk-interval", prefix="/ajax-api/2.0/mlflow/",
                   params={"run_ids": served.run_id, "metric_key": "loss", "max_results": 320})
        assert sorted(m["step"] for m in bulk["metrics"]) == list(range(10))
        summaries = api(server, "POST", "experiments/search-datasets",
                        {"experiment_ids": [served.experiment_id]},
                        prefix="/ajax-api/2.0/mlflow/")["dataset_summaries"]
        assert [(d["name"], d.get("context")) for d in summaries] == [("ui-data", "training")]


def _wait_for(check: Any, what: str, timeout: float = 30.0) -> Any:
    """Poll ``check()`` until it returns something truthy.  Why poll: a server's store
    buffers logged values and writes them about once a second, like any cloudtrack client."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f}s")
        time.sleep(0.2)


def _create_and_log(served: Served, writer: MlflowServer, reader: MlflowServer) -> str:
    name = f"via-{writer.port}"
    run = api(writer, "POST", "runs/create",
              {"experiment_id": served.experiment_id, "run_name": name,
               "start_time": int(time.time() * 1000)})["run"]
    run_id = run["info"]["run_id"]
    api(writer, "POST", "runs/log-batch",
        {"run_id": run_id, "params": [{"key": "written_by", "value": str(writer.port)}],
         "metrics": [{"key": "acc", "value": 0.5, "timestamp": 0, "step": 1}]})

    # Creating a run is durable at once.
    got = api(reader, "GET", "runs/get", params={"run_id": run_id})["run"]
    assert got["info"]["run_name"] == name

    def logged() -> dict[str, Any] | None:
        runs = api(reader, "POST", "runs/search",
                   {"experiment_ids": [served.experiment_id],
                    "filter": f"attributes.run_name = '{name}'"}).get("runs", [])
        data: dict[str, Any] = runs[0]["data"] if runs else {}
        return data if data.get("params") and data.get("metrics") else None

    data = _wait_for(logged, f"params and metrics logged through {writer.url} not seen "
                             f"through {reader.url}")
    assert {p["key"]: p["value"] for p in data["params"]} == {"written_by": str(writer.port)}
    assert [(m["key"], m["value"]) for m in data["metrics"]] == [("acc", 0.5)]
    return name


def test_run_created_through_one_server_is_seen_through_the_other(served: Served) -> None:
    a, b = served.servers
    names = [_create_and_log(served, a, b), _create_and_log(served, b, a)]
    for server in (a, b):
        runs = api(server, "POST", "runs/search", {"experiment_ids": [served.experiment_id]})
        assert sorted(r["info"]["run_name"] for r in runs["runs"]) == sorted(["ui-run", *names])


def _model_versions(server: MlflowServer, name: str) -> dict[str, dict[str, Any]]:
    found = api(server, "GET", "model-versions/search", params={"filter": f"name='{name}'"})
    return {v["version"]: v for v in found.get("model_versions", [])}


def test_both_servers_serve_the_model_registry(served: Served) -> None:
    for server in served.servers:
        models = api(server, "GET", "registered-models/search")["registered_models"]
        # Other tests may register models of their own.
        [model] = [m for m in models if m["name"] == MODEL]
        assert sorted((v["version"], v["current_stage"]) for v in model["latest_versions"]) \
            == [("1", "Production"), ("2", "None")], model
        assert model["aliases"] == [{"alias": "champion", "version": "2"}]

        versions = _model_versions(server, MODEL)
        assert {k: (v["current_stage"], v["status"], v["run_id"]) for k, v in versions.items()} \
            == {"1": ("Production", "READY", served.model_run_id),
                "2": ("None", "READY", served.model_run_id)}
        assert all(v["source"].startswith("models:/m-") for v in versions.values()), versions

        champion = api(server, "GET", "registered-models/alias",
                       params={"name": MODEL, "alias": "champion"})["model_version"]
        assert (champion["version"], champion["aliases"]) == ("2", ["champion"])


def test_model_registered_through_one_server_is_seen_through_the_other(served: Served) -> None:
    a, b = served.servers
    name = f"ui-shared-{a.port}"  # its own model: MODEL stays as logged for the other tests
    # What `mlflow.register_model("runs:/<run id>/model", name)` sends.
    source = f"runs:/{served.model_run_id}/model"
    api(a, "POST", "registered-models/create", {"name": name})
    for number, (writer, reader) in enumerate([(a, b), (b, a)], start=1):
        made = api(writer, "POST", "model-versions/create",
                   {"name": name, "source": source, "run_id": served.model_run_id}
                   )["model_version"]
        assert made["version"] == str(number)
        got = api(reader, "GET", "model-versions/get",
                  params={"name": name, "version": made["version"]})["model_version"]
        assert (got["source"], got["run_id"], got["status"]) == (source, served.model_run_id,
                                                                 "READY")
    api(b, "POST", "registered-models/alias", {"name": name, "alias": "shared", "version": "1"})
    api(a, "POST", "model-versions/transition-stage",
        {"name": name, "version": "2", "stage": "Staging", "archive_existing_versions": False})
    for server in (a, b):
        assert {k: v["current_stage"] for k, v in _model_versions(server, name).items()} \
            == {"1": "None", "2": "Staging"}
        [model] = api(server, "GET", "registered-models/search",
                      params={"filter": f"name='{name}'"})["registered_models"]
        assert model["aliases"] == [{"alias": "shared", "version": "1"}]
        shared = api(server, "GET", "registered-models/alias",
                     params={"name": name, "alias": "shared"})["model_version"]
        assert shared["version"] == "1"


def test_logged_model_registered_through_a_server(served: Served) -> None:
    """What ``mlflow.<flavor>.log_model(..., registered_model_name=...)`` and
    ``mlflow.register_model("models:/m-…")`` send to a server in MLflow 3."""
    server = served.servers[0]
    name = f"ui-logged-{server.port}"
    v2 = api(server, "GET", "model-versions/get",
             params={"name": MODEL, "version": "2"})["model_version"]
    # REST answers carry no model_id (nor do they on MLflow's SQL store): the source names it.
    model_id = v2["source"].removeprefix("models:/")
    assert model_id.startswith("m-"), v2
    api(server, "POST", "registered-models/create", {"name": name})
    made = api(server, "POST", "model-versions/create",
               {"name": name, "source": v2["source"], "run_id": served.model_run_id,
                "model_id": model_id})["model_version"]
    assert made["version"] == "1"
    logged = api(server, "GET", f"logged-models/{model_id}")["model"]
    tags = {t["key"]: t["value"] for t in logged["info"].get("tags", [])}
    # Versions are numbers in this tag (MLflow's client and SQL store write them so).
    registered = [(v["name"], str(v["version"])) for v in json.loads(tags["mlflow.modelVersions"])]
    assert registered == [(MODEL, "2"), (name, "1")], registered


# -- the UI ----------------------------------------------------------------------------------

def _ui_skipped() -> bool:
    return os.environ.get("CLOUDTRACK_SKIP_UI") == "1"


@pytest.fixture(scope="module")
def ui_served(browser: Any, served_all: dict[str, Served]) -> Served:
    # ``browser`` first: a skipped or impossible UI test starts no server.
    return _ready(served_all, UI_BACKEND)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if _ui_skipped():
        pytest.skip("CLOUDTRACK_SKIP_UI=1")
    hint = ("install Debian's chromium (apt-get update && apt-get install -y chromium; .ci/run "
            "does this), or set CLOUDTRACK_SKIP_UI=1 to skip the UI tests")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"the UI tests need {CHROMIUM}: {hint}", pytrace=False)
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError as e:
        pytest.fail(f"the UI tests need playwright (pip install -e '.[test]'): {e}", pytrace=False)
    with tempfile.TemporaryDirectory(prefix="cloudtrack-chromium-") as profile, \
            sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            chromium_sandbox=False, viewport={"width": 1400, "height": 900})
        context.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A tab that records every server error the UI met; the test fails on any 500."""
    p = browser.new_page()
    p.server_errors = []  # type: ignore[attr-defined]
    p.on("response", lambda r: p.server_errors.append(f"{r.status} {r.request.method} {r.url}")
         if r.status >= 500 else None)
    yield p
    p.close()


def _no_server_errors(page: Any, served: Served) -> None:
    """501 answers are features cloudtrack declines on purpose (traces…); 500 is a bug."""
    crashes = [e for e in page.server_errors if not e.startswith("501 ")]
    assert not crashes, "the UI met server errors:\n" + "\n".join(crashes) + \
        "\nserver log ends with:\n" + served.servers[0].log_tail(3000)


def _shot(page: Any, name: str) -> None:
    page.screenshot(path=f"/tmp/ui-{name}.png")


def test_ui_lists_the_experiment(ui_served: Served, page: Any) -> None:
    from playwright.sync_api import expect

    page.goto(f"{ui_served.servers[0].url}/#/experiments")
    expect(page.get_by_role("link", name="ui-demo", exact=True)).to_be_visible()
    _shot(page, "experiments")
    _no_server_errors(page, ui_served)


def test_ui_run_page_shows_the_param_and_the_loss_chart(ui_served: Served, page: Any) -> None:
    from playwright.sync_api import expect

    server = ui_served.servers[1]
    # Straight to the model-training view: a fresh browser profile opens an experiment on
    # MLflow's GenAI overview, which is built on traces (declined by cloudtrack with 501).
    page.goto(f"{server.url}/#/experiments/{ui_served.experiment_id}/runs/{ui_served.run_id}"
              "?workflowType=machine_learning")
    failed = page.get_by_text("Can't load run details")
    param = page.get_by_role("row").filter(has=page.get_by_text("lr", exact=True))
    expect(param.or_(failed).first).to_be_visible()
    if failed.is_visible():
        _shot(page, "run-error")
        pytest.fail("the run page shows an error: "
                    + page.locator("main").inner_text()[:1000].replace("\n", " "))
    expect(page.get_by_role("heading", name="ui-run")).to_be_visible()
    expect(param).to_contain_text("0.01")
    param.scroll_into_view_if_needed()
    _shot(page, "run")

    page.get_by_role("tab", name="Model metrics").click()
    expect(page.get_by_text("ui-run (loss)")).to_be_visible()  # the chart's legend
    # One plotted point per logged step.
    expect(page.locator(".js-plotly-plot .scatterlayer .point")).to_have_count(len(LOSS))
    _shot(page, "metrics")
    _no_server_errors(page, ui_served)


def test_ui_models_pages_show_the_registered_model(ui_served: Served, page: Any) -> None:
    from playwright.sync_api import expect

    # MLflow advertises its new registry UI (aliases instead of stages) in a modal, once.
    promo = page.get_by_role("dialog").filter(has_text="Flexible, governed deployments")
    page.add_locator_handler(promo, lambda: promo.get_by_role("button", name="Close").click())
    page.goto(f"{ui_served.servers[0].url}/#/models")
    link = page.get_by_role("link", name=MODEL, exact=True)
    expect(link).to_be_visible()
    _shot(page, "models")

    link.click()
    page.wait_for_url(f"**/#/models/{MODEL}")
    rows = page.get_by_role("row")

    def row(version: int) -> Any:
        return rows.filter(has=page.get_by_role("link", name=f"Version {version}", exact=True))

    # The new UI (the default) shows aliases ...
    expect(row(2)).to_contain_text("champion")
    expect(row(1)).to_be_visible()
    _shot(page, "models-aliases")
    # ... the previous one stages.  (The choice sticks in this module's browser profile.)
    page.get_by_role("switch", name="New model registry UI").click()
    page.get_by_role("dialog").filter(has_text="Disable the new model stages") \
        .get_by_role("button", name="Disable").click()
    expect(row(1)).to_contain_text("Production")
    expect(row(2)).to_contain_text("None")
    _shot(page, "models-stages")
    _no_server_errors(page, ui_served)
