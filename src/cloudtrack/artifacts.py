"""MLflow's ``ArtifactRepository`` over the blob layer, for ``s3://``, ``gs://``, ``wasbs://``
and ``abfss://`` artifact URIs.

Registered as a plugin for those schemes, so it replaces MLflow's built-in repositories: it
resolves its URI with the same :func:`cloudtrack.config.resolve` as the tracking store, so it
honours MLFLOW_S3_ENDPOINT_URL, MLFLOW_S3_IGNORE_TLS, MLFLOW_S3_UPLOAD_EXTRA_ARGS,
AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_ACCESS_KEY, STORAGE_EMULATOR_HOST and the SDKs'
own variables.  Uploads and downloads of many files run in parallel; large files stream.
"""

from __future__ import annotations

import os
import posixpath
from concurrent.futures import as_completed

from mlflow.entities import FileInfo
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.store.artifact.artifact_repo import ArtifactRepository

from cloudtrack.blobs import Blobs, open_blobs
from cloudtrack.config import resolve
from cloudtrack.mlflow_errors import boundary


def _clean(path: str | None) -> str:
    """An artifact path relative to the repository root, validated against escapes."""
    if not path:
        return ""
    path = path.replace("\\", "/").strip("/")
    if not path:
        return ""
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise MlflowException(
            f"Invalid artifact path {path!r}: '.', '..' and empty segments are not allowed",
            INVALID_PARAMETER_VALUE)
    return path


@boundary("__init__", "_is_directory", "_download_file")
class BlobArtifactRepository(ArtifactRepository):
    """Artifacts under one object-store URI (an experiment's or run's artifact location).

    ``_download_file`` answers MLflow's errors too: MLflow's ``download_artifacts`` passes
    their code on (a missing file is RESOURCE_DOES_NOT_EXIST, not an internal error).
    """

    def __init__(self, artifact_uri: str, tracking_uri: str | None = None,
                 registry_uri: str | None = None) -> None:
        super().__init__(artifact_uri, tracking_uri, registry_uri)
        self.blobs: Blobs = open_blobs(resolve(artifact_uri))

    def _key(self, *parts: str | None) -> str:
        return "/".join(p for p in (_clean(p) for p in parts) if p)

    def log_artifact(self, local_file: str, artifact_path: str | None = None) -> None:
        key = self._key(artifact_path, os.path.basename(local_file))
        self.blobs.upload_file(key, local_file)

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        base = _clean(artifact_path)
        jobs = []
        for root, _dirs, files in os.walk(local_dir):
            rel = os.path.relpath(root, local_dir)
            rel = "" if rel == "." else rel.replace(os.sep, "/")
            for name in files:
                key = self._key(base, rel, name)
                jobs.append(self.thread_pool.submit(self.blobs.upload_file, key,
                                                    os.path.join(root, name)))
        for job in as_completed(jobs):
            job.result()

    def list_artifacts(self, path: str | None = None) -> list[FileInfo]:
        prefix = _clean(path)
        files, dirs = self.blobs.list_dir(prefix + "/" if prefix else "")
        infos = [FileInfo(posixpath.join(prefix, d) if prefix else d, True, None) for d in dirs]
        for f in files:
            if prefix and f.key == prefix:
                continue
            infos.append(FileInfo(f.key, False, f.size))
        return sorted(infos, key=lambda i: i.path)

    def _is_directory(self, artifact_path: str) -> bool:
        prefix = _clean(artifact_path)
        if not prefix:
            return True
        files, dirs = self.blobs.list_dir(prefix + "/")
        return bool(files or dirs)

    def _download_file(self, remote_file_path: str, local_path: str) -> None:
        self.blobs.download_file(self._key(remote_file_path), local_path)

    def delete_artifacts(self, artifact_path: str | None = None) -> None:
        prefix = _clean(artifact_path)
        if prefix:
            if self.blobs.exists(prefix):
                self.blobs.delete(prefix)
            prefix += "/"
        keys = [i.key for i in self.blobs.list(prefix)]
        for job in as_completed([self.thread_pool.submit(self.blobs.delete, k) for k in keys]):
            job.result()
