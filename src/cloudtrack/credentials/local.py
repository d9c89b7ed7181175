"""A local directory store signs nothing: this user's file permissions decide."""

from __future__ import annotations

from cloudtrack.config import StoreConfig
from cloudtrack.credentials.base import Credential


class LocalCredentials:
    backend = "file"

    def __init__(self, config: StoreConfig) -> None:
        self.config = config

    def describe(self) -> Credential:
        return Credential("none", "this user's file permissions", "os")

    def current(self, timeout: float | None = None) -> Credential:
        return self.describe()

    def close(self) -> None:
        pass
