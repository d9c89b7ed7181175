"""Prints the faults the chaos tests injected, by kind, at the end of the run.

Each chaos test puts its proxies' counts in its report (``user_properties``, which pytest-xdist
carries from its workers); this collects them where the terminal summary is written.  Only
loaded in the process that writes the summary when ``tests/chaos`` is named on the command line
(pytest loads the conftest files of the paths it is given, and of ``test*`` folders below
them): ``.ci/run`` and ``tox -e chaos`` do.
"""

from __future__ import annotations

import pytest

FAULT_COUNTS = "fault_counts"

_seen: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call":
        return
    for name, value in report.user_properties:
        if name == FAULT_COUNTS:
            _seen.append((report.nodeid, str(value)))


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if not _seen:
        return
    terminalreporter.section("chaos: faults injected, by kind")
    for nodeid, counts in sorted(_seen):
        terminalreporter.write_line(f"{nodeid.split('::')[-1]}: {counts}")
