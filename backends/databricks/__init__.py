"""A stand-in Databricks workspace (REST API, SCIM ``Me``, OAuth M2M, Unity Catalog models) on a
loopback port, for the doctor's Databricks tests; no real workspace is reachable from tests."""

from backends.databricks.service import MODES, StandInWorkspace

__all__ = ["MODES", "StandInWorkspace"]
