"""What a migration destination does, whatever it is: the interface the three writers
(``dest_cloudtrack``, ``dest_sql``, ``dest_server``) implement, and :func:`open_destination`.

The orchestrator (:mod:`cloudtrack.migrate.runner`) calls, per experiment: :meth:`create_experiment`
(or finds the copy among :meth:`experiments`), :meth:`copied_runs` once, then per run that is
missing or outdated :meth:`begin_run` → (artifacts, the run's logged models) →
:meth:`finish_run`, and :meth:`finish_experiment` last.  A run becomes visible in the
destination only with the last write of :meth:`finish_run` — its head, its transaction, its
final status — so a run interrupted anywhere before that is copied again by the next
migration, over its own partial objects, and nothing is duplicated.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, NoReturn

from mlflow.entities import Experiment, LifecycleStage
from mlflow.entities.model_registry import ModelVersion, RegisteredModel

from cloudtrack.migrate.endpoints import Endpoint
from cloudtrack.migrate.model import ModelCopy, RunCopy


@dataclass(frozen=True)
class RunTarget:
    """Where a run's copy goes: its id in the destination and its artifact URI there."""

    run_id: str
    artifact_uri: str


@dataclass(frozen=True)
class CopiedRun:
    """A run of the destination that is a copy of a source run."""

    source_run_id: str
    run_id: str
    fingerprint: str


@dataclass(frozen=True)
class CopiedModel:
    """A logged model of the destination that is a finished copy of a source's."""

    source_model_id: str
    model_id: str
    #: :func:`~cloudtrack.migrate.model.model_fingerprint` of the copy as a search returns it.
    fingerprint: str


class Destination(abc.ABC):
    """The store a migration writes into."""

    #: ``cloudtrack``, ``sql`` or ``server``.
    kind: ClassVar[str]
    #: Run and logged-model ids, and every timestamp, are written exactly as in the source.
    #: Where False the destination chooses ids (the id map records them) and times of creation.
    keeps_ids: ClassVar[bool]
    #: What the destination cannot hold, as (kind, reason) — e.g. traces in a cloudtrack store.
    cannot_hold: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    # -- experiments ---------------------------------------------------------------------------

    @abc.abstractmethod
    def experiments(self) -> list[Experiment]:
        """Every experiment of the destination, deleted ones included."""

    @abc.abstractmethod
    def create_experiment(self, source: Experiment, experiment_id: str | None) -> Experiment:
        """Create the copy of ``source``: its name, tags and (where the destination keeps
        them) creation and update times, active for now (:meth:`finish_experiment` sets the
        stage), with ``experiment_id`` when given, else an id the destination picks.  Its
        artifact location is the destination's default for that id."""

    @abc.abstractmethod
    def update_experiment(self, dest: Experiment, source: Experiment) -> None:
        """Bring an existing copy up to date: add or change the tags of ``source``."""

    @abc.abstractmethod
    def finish_experiment(self, dest: Experiment, source: Experiment) -> None:
        """Set the copy's lifecycle stage (and update time, where kept) as in ``source``, and
        leave behind whatever makes the next migration's look at it cheap."""

    # -- runs ------------------------------------------------------------------------------------

    @abc.abstractmethod
    def copied_runs(self, experiment_id: str) -> dict[str, CopiedRun]:
        """The runs of destination experiment ``experiment_id`` that are copies, by source run
        id, with the fingerprint (:func:`~cloudtrack.migrate.model.run_fingerprint`) of each
        copy as a search returns it.  A few requests per 1,000 runs."""

    @abc.abstractmethod
    def begin_run(self, copy: RunCopy, earlier: CopiedRun | None) -> RunTarget:
        """Where ``copy`` goes; ``earlier`` is a previous (partial or outdated) copy of it.
        Destinations that keep ids write nothing here; a server creates the run (or reuses
        ``earlier``), unfinished until :meth:`finish_run`."""

    @abc.abstractmethod
    def finish_run(self, copy: RunCopy, target: RunTarget) -> None:
        """Write the whole run — params, tags, every metric point, inputs, outputs, status,
        times, lifecycle stage — ending with the write that makes it complete.  Writing a
        run again (a re-run after an interruption, or a run that grew) duplicates nothing."""

    # -- logged models ---------------------------------------------------------------------------

    @abc.abstractmethod
    def copied_models(self, experiment_ids: Sequence[str]) -> dict[str, CopiedModel]:
        """The finished copies of logged models in these experiments, by source model id, with
        the fingerprint of each copy.  Reads only."""

    @abc.abstractmethod
    def write_logged_model(self, copy: ModelCopy, artifacts: Callable[[str], None]) -> str:
        """Write the logged model (params, tags, status, metrics); call ``artifacts`` with its
        destination artifact location before the model is complete.  Returns its id.  A model
        written before (interrupted, or changed in the source since) is brought up to date in
        place, keeping its id."""

    # -- registry --------------------------------------------------------------------------------

    @abc.abstractmethod
    def registered_models(self) -> dict[str, tuple[RegisteredModel, list[ModelVersion]]]:
        """Every registered model and prompt of the destination with its live versions."""

    @abc.abstractmethod
    def write_registered_model(self, model: RegisteredModel, versions: Sequence[ModelVersion],
                               deleted: Sequence[int]) -> int:
        """Create the model (or bring an existing copy up to date: description, tags,
        aliases), then every version of ``versions`` that is missing — with its number,
        stage, tags, description, source, run and model ids as given (already rewritten for
        this destination) — and keep the numbers in ``deleted`` taken (deleted versions).
        Returns how many versions were written."""

    def close(self) -> None:
        self.endpoint.close()


class AbsentDestination(Destination):
    """A destination where no store is yet, as a dry run reads it (it must not create one):
    empty, and never written."""

    kind = "absent"
    keeps_ids = True

    def experiments(self) -> list[Experiment]:
        # What the store would hold once created: MLflow's SQL stores and cloudtrack's make
        # the Default experiment, id 0, when they are first opened.
        return [Experiment("0", "Default", "", LifecycleStage.ACTIVE)]

    def copied_runs(self, experiment_id: str) -> dict[str, CopiedRun]:
        return {}

    def copied_models(self, experiment_ids: Sequence[str]) -> dict[str, CopiedModel]:
        return {}

    def registered_models(self) -> dict[str, tuple[RegisteredModel, list[ModelVersion]]]:
        return {}

    def _written(self) -> NoReturn:
        raise RuntimeError(f"{self.endpoint.shown} holds no store yet and a dry run writes "
                           "nothing")

    def create_experiment(self, source: Experiment, experiment_id: str | None) -> Experiment:
        self._written()

    def update_experiment(self, dest: Experiment, source: Experiment) -> None:
        self._written()

    def finish_experiment(self, dest: Experiment, source: Experiment) -> None:
        self._written()

    def begin_run(self, copy: RunCopy, earlier: CopiedRun | None) -> RunTarget:
        self._written()

    def finish_run(self, copy: RunCopy, target: RunTarget) -> None:
        self._written()

    def write_logged_model(self, copy: ModelCopy, artifacts: Callable[[str], None]) -> str:
        self._written()

    def write_registered_model(self, model: RegisteredModel, versions: Sequence[ModelVersion],
                               deleted: Sequence[int]) -> int:
        self._written()

    def close(self) -> None:
        pass


def open_destination(endpoint: Endpoint) -> Destination:
    """The writer for ``endpoint``'s kind (for an endpoint where no store is yet, an empty
    one that says what that kind could not hold)."""
    cls: type[Destination]
    if endpoint.kind == "cloudtrack":
        from cloudtrack.migrate.dest_cloudtrack import CloudtrackDestination

        cls = CloudtrackDestination
    elif endpoint.kind == "sql":
        from cloudtrack.migrate.dest_sql import SqlDestination

        cls = SqlDestination
    elif endpoint.kind == "server":
        from cloudtrack.migrate.dest_server import ServerDestination

        cls = ServerDestination
    else:
        raise ValueError(f"{endpoint.shown} ({endpoint.kind}) cannot be a destination")
    if endpoint.tracking is None:
        absent = type(f"Absent{cls.__name__}", (AbsentDestination,),
                      {"keeps_ids": cls.keeps_ids, "cannot_hold": cls.cannot_hold})
        return absent(endpoint)  # type: ignore[no-any-return]
    return cls(endpoint)
