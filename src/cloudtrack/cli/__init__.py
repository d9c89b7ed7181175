"""The ``cloudtrack`` command: thin click commands over the library, one module per command
group (``config``, ``doctor``, ``demo``, ``migrate``, ``flush``, ``check``,
``login``/``logout``/``whoami``).  Commands print; the library
they call never does."""

from __future__ import annotations

import click

from cloudtrack import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cloudtrack")
def main() -> None:
    """MLflow tracking on S3, GCS, Azure Blob or a local directory — no server, no database.

    Point unchanged MLflow code at a store with MLFLOW_TRACKING_URI=s3://bucket/prefix
    (or gs://, wasbs://, abfss://, a local directory).
    """


def _register() -> None:
    # Imported here, not at the top: each module adds its commands to ``main``.
    from cloudtrack.cli import (  # noqa: F401
        check_cmd,
        config_cmd,
        demo,
        doctor_cmd,
        flush_cmd,
        login_cmd,
        migrate,
    )


_register()

__all__ = ["main"]
