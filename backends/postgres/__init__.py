"""A throwaway PostgreSQL cluster, for MLflow's SQL store (``postgresql://…``)."""

from backends.postgres.service import PostgresError, PostgresService, find_binaries

__all__ = ["PostgresError", "PostgresService", "find_binaries"]
