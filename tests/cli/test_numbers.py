"""Numeric options refuse a wrong value in words that say what to give (exit 2, nothing
done), not click's "is not a valid integer range"."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cloudtrack.cli import main


@pytest.mark.parametrize(("args", "said"), [
    (["migrate", "a", "b", "--workers", "abc"],
     "'abc' is not a whole number: give one from 1 to 64"),
    (["migrate", "a", "b", "--workers", "3.5"],
     "'3.5' is not a whole number: give one from 1 to 64"),
    (["migrate", "a", "b", "--workers", "0"],
     "0 is out of range: give a whole number from 1 to 64"),
    (["migrate", "a", "b", "--server-requests", "257"],
     "257 is out of range: give a whole number from 1 to 256"),
    (["doctor", "s3://bucket", "--timeout", "soon"],
     "'soon' is not a number of seconds: give one from 0.1 to 60"),
    (["doctor", "s3://bucket", "--timeout", "nan"],
     "'nan' is not a number of seconds: give one from 0.1 to 60"),
    (["doctor", "s3://bucket", "--timeout", "0.05"],
     "0.05 is out of range: give a number of seconds from 0.1 to 60"),
])
def test_a_wrong_number_says_what_to_give(args: list[str], said: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert said in result.output
    assert "valid integer range" not in result.output


def test_a_right_number_goes_through(tmp_path: Path) -> None:
    """Within bounds the option is taken: the command goes on to its own checks (here the
    missing source), with --workers read as a number."""
    missing = tmp_path / "missing"
    result = CliRunner().invoke(main, ["migrate", str(missing), str(tmp_path / "dest"),
                                       "--workers", "64", "--dry-run"])
    assert result.exit_code != 2 or "--workers" not in result.output, result.output
    assert "does not exist" in result.output
