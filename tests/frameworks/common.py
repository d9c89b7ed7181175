"""What the framework example tests share: how a script runs on a store (as a user runs it, in
a process of its own, nothing fetched from a hub) and how its summary is compared."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.reference import script_summary
from tests.fixtures.services import Store

#: Offline (a tiny model and a tokenizer built locally: nothing may come from a hub) and on one
#: thread each (two suites share two cores; one thread also keeps float sums in one order).
ENV = {
    "GIT_PYTHON_REFRESH": "quiet",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def run_script(script: Path, env: dict[str, str], cwd: Path) -> dict[str, object]:
    # The cache of datasets and transformers in the test's folder, not the user's home.
    env = {**env, **ENV, "HF_HOME": str(cwd / "hf-home")}
    return script_summary([str(script)], env, cwd, timeout=600)


def store_env(store: Store) -> tuple[dict[str, str], Path | None]:
    """The environment that points a script at ``store``, and the folder to run it in (``None``:
    any).  The local store is reached the cheat sheet's way, ``file:./mlruns`` relative to the
    working directory."""
    if store.backend == "local":
        root = Path(store.uri.removeprefix("file://"))
        return {**store.env, "MLFLOW_TRACKING_URI": "file:./mlruns"}, root
    return {**store.env, "MLFLOW_TRACKING_URI": store.uri}, None


def assert_reached(store: Store, cwd: Path) -> None:
    """The local case went where the cheat sheet says, ``./mlruns``, and into cloudtrack's
    store, not MLflow's FileStore: a divergence there would otherwise pass unseen."""
    if store.backend == "local":
        assert (cwd / "mlruns" / "cloudtrack.json").is_file(), sorted(cwd.iterdir())


def differences(expected: dict[str, object], got: dict[str, object]) -> list[str]:
    """Every top-level entry where ``got`` differs from ``expected``, one line each, so that a
    failure shows all of a backend's divergences at once."""
    out: list[str] = []
    for key in sorted(set(expected) | set(got)):
        e, g = expected.get(key), got.get(key)
        if isinstance(e, dict) and isinstance(g, dict):
            out.extend(f"{key}.{d}" for d in differences(e, g))
        elif (isinstance(e, list) and isinstance(g, list) and len(e) == len(g)
              and all(isinstance(x, dict) for x in e + g)):
            # Lists of records (logged models, versions): record by record, field by field,
            # so that a CI log's excerpt still shows which field differed.
            out.extend(f"{key}[{i}].{d}" for i, (x, y) in enumerate(zip(e, g, strict=True))
                       for d in differences(x, y))
        elif e != g:
            out.append(f"{key}: sqlite {e!r} != cloudtrack {g!r}")
    return out


def divergence(backend: str, diff: list[str], shown: int = 30) -> str:
    """A failure's message: the first ``shown`` differences, each cut at 300 characters, and how
    many more there are, so that a CI log's excerpt ends with a count rather than mid-line."""
    lines = [d if len(d) <= 300 else d[:300] + " …" for d in diff[:shown]]
    if len(diff) > shown:
        lines.append(f"… and {len(diff) - shown} more differences")
    return f"{backend} diverged from MLflow's sqlite store:\n" + "\n".join(lines)
