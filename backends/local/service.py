"""The local directory store: no process, a temporary folder per store."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from backends._common import StorageService, unique


class LocalDirectory(StorageService):
    name = "local"

    def start(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="cloudtrack-local-"))

    def stop(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    @property
    def env(self) -> dict[str, str]:
        return {}

    def new_store(self, name: str = "store") -> str:
        root = self.base / unique(name)
        root.mkdir()
        return f"file://{root}"

    def missing_store_uri(self) -> str:
        return f"file://{self.base / unique('missing') / 'not-there'}"

    def bad_credentials_env(self) -> dict[str, str]:
        raise NotImplementedError("a local directory has no credentials")
