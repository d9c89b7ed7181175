"""The tests mirror ``src/cloudtrack``; what several test modules share is the pytest plugin in
``tests/fixtures/``, registered here once."""

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.stores",
    "tests.fixtures.reference",
    "tests.fixtures.doctor",
    "tests.fixtures.faults",
]
