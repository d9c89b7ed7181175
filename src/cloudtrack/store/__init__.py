"""The storage format: where records live, how they are encoded, and the rules for changing
them with many writers and no server (docs/format.md describes it for people).

Shared by the MLflow stores (``cloudtrack.tracking``, ``cloudtrack.model_registry``), the
doctor, ``cloudtrack migrate``, and the maintenance tools to come.  Modules, bottom up:

* :mod:`~cloudtrack.store.layout`: the key of every record;
* :mod:`~cloudtrack.store.records`: the codec (JSON bytes <-> record dicts, metric tuples);
* :mod:`~cloudtrack.store.build`: every record's shape, built from its fields;
* :mod:`~cloudtrack.store.claims`: experiment ids and names claimed with put-if-absent;
* :mod:`~cloudtrack.store.cas`: the versioned read-modify-write every changing record goes through;
* :mod:`~cloudtrack.store.marker`: the format marker (``cloudtrack.json``);
* :mod:`~cloudtrack.store.cache`: records cached by the version a listing reports;
* :mod:`~cloudtrack.store.snapshots`: the packed run heads of an experiment (a checkpoint);
* :mod:`~cloudtrack.store.entities`: records as MLflow entities, and entities as records;
* :mod:`~cloudtrack.store.copy`: copying every object of one store into another.

Only ``entities`` imports MLflow: the doctor reads the marker without paying for that import.
"""
