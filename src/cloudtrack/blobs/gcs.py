"""GcsBlobs: the blob interface on Google Cloud Storage, through google-cloud-storage.

Versions are object generations; put-if-absent is ``ifGenerationMatch=0`` and put-if-version
``ifGenerationMatch=<generation>``, which GCS checks atomically.  Every SDK call runs once
(``retry=None``): the base class retries transient failures itself and knows which conditional
writes may have landed.  Credentials come from the resolved config, never from a fallback the
caller did not ask for: a missing ADC is an error, not an anonymous client (MLflow's
``gs://`` artifact store silently went anonymous; catalogue row 17).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NoReturn

import google.auth
import google.auth.exceptions
import requests
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials
from google.auth.transport.requests import AuthorizedSession
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse

from cloudtrack.blobs.base import CHUNK_SIZE, MULTIPART_THRESHOLD, BlobInfo, Blobs
from cloudtrack.config import redact
from cloudtrack.errors import (
    AlreadyExists,
    BlobError,
    BlobNotFound,
    ContainerNotFound,
    PermissionDenied,
    PreconditionFailed,
    TransientError,
    Unauthenticated,
)
from cloudtrack.retry import RetryPolicy, retry_after

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

    from cloudtrack.config import StoreConfig

log = logging.getLogger("cloudtrack.blobs.gcs")

SCOPES = ("https://www.googleapis.com/auth/devstorage.full_control",)
DEFAULT_ENDPOINT = "https://storage.googleapis.com"
PAGE_SIZE = 1000
#: Enough connections for the thread pools MLflow and our own flushers use at once.
POOL_SIZE = 64
LOGIN_HINT = ("run `gcloud auth application-default login`, or set "
              "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file")

_PERMISSION = re.compile(r"\bstorage\.[a-zA-Z]+\.[a-zA-Z]+\b")
_METHOD_URL = re.compile(r"^[A-Z]+ \S+: ")
_UPLOAD_ID = re.compile(r"(upload_id=)[^&\s\"']+")

#: Errors that say nothing about the request and may pass on a second try.
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


def _timestamp(value: str | None) -> datetime:
    """An RFC 3339 time from the JSON API (``2026-11-26T12:00:00.123Z``)."""
    if not value:
        return datetime.fromtimestamp(0, timezone.utc)
    try:
        return datetime.fromisoformat(value)
    except ValueError:  # nanoseconds, which fromisoformat does not take
        from google.cloud._helpers import _rfc3339_nanos_to_datetime

        return _rfc3339_nanos_to_datetime(value)  # type: ignore[no-any-return]


class GcsBlobs(Blobs):
    backend = "gcs"

    def __init__(self, config: StoreConfig, *, retry: RetryPolicy | None = None) -> None:
        super().__init__(config, retry=retry)
        self.bucket_name = config.container
        #: Names inside the bucket start with this ('' or '<prefix>/').
        self.root = f"{config.prefix}/" if config.prefix else ""
        self.timeout = (float(config.get("connect_timeout", 10.0)),  # type: ignore[arg-type]
                        float(config.get("read_timeout", 60.0)))  # type: ignore[arg-type]
        self._client: storage.Client | None = None
        self._lock = threading.Lock()

    # -- client ------------------------------------------------------------------------------

    @property
    def client(self) -> storage.Client:
        """The SDK client, built on first use so that opening a store costs no ADC lookup."""
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _endpoint(self) -> str | None:
        configured = self.config.get("emulator_host") or self.config.get("api_endpoint")
        if configured:
            return str(configured)
        # The SDK reads these two from os.environ by itself; the resolved config, not the
        # process environment, decides where this store lives.
        if os.environ.get("STORAGE_EMULATOR_HOST") or os.environ.get("API_ENDPOINT_OVERRIDE"):
            return DEFAULT_ENDPOINT
        return None

    def _credentials(self) -> tuple[Credentials, str | None]:
        path = self.config.get("credentials_file")
        try:
            if path:
                creds, project = google.auth.load_credentials_from_file(str(path), scopes=SCOPES)
                return creds, project
            if self.config.get("emulator_host"):
                # What the SDK does for STORAGE_EMULATOR_HOST without credentials; an emulator
                # must not receive the user's real tokens.
                return AnonymousCredentials(), None
            creds, project = google.auth.default(scopes=SCOPES)
            return creds, project
        except google.auth.exceptions.DefaultCredentialsError as e:
            if path:
                message = (f"cannot load the credentials in GOOGLE_APPLICATION_CREDENTIALS="
                           f"{path} for {self.uri}: {e}; point it at a valid service-account "
                           "or external-account key file")
            else:
                message = (f"no Google credentials found for {self.uri} (Application Default "
                           f"Credentials are not set up); {LOGIN_HINT}")
            raise Unauthenticated(redact(message), self.uri) from e

    def _make_client(self) -> storage.Client:
        creds, creds_project = self._credentials()
        project = self.config.get("project") or creds_project
        # Our own session: bigger pool, no hidden urllib3 retries, a bounded token refresh.
        session = AuthorizedSession(creds, refresh_timeout=sum(self.timeout))
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE,
                                                max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        endpoint = self._endpoint()
        log.debug("GCS client for %s: endpoint %s, %s credentials", self.uri,
                  endpoint or "default", type(creds).__name__)
        return storage.Client(
            # project=None (not omitted) keeps the SDK from running its own ADC lookup.
            project=str(project) if project else None,
            credentials=creds,
            _http=session,
            client_options={"api_endpoint": endpoint} if endpoint else None,
        )

    def _bucket(self) -> storage.Bucket:
        return self.client.bucket(self.bucket_name)

    def _name(self, key: str) -> str:
        return self.root + key

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- errors ------------------------------------------------------------------------------

    def _gs(self, key: str | None = None) -> str:
        return f"gs://{self.bucket_name}/{self._name(key or '')}"

    def _raise(self, e: Exception, key: str | None, op: str, *,
               missing: str = "object", if_absent: bool = False) -> NoReturn:
        """Translate an SDK error.  ``missing`` says what a 404 means for this operation:
        ``object`` (find out whether it was the bucket), or ``bucket`` (the object could not
        have been missing, as for writes and listings)."""
        uri = self.object_uri(key) if key else self.uri
        gs = self._gs(key)
        if isinstance(e, BlobError):
            raise e
        if isinstance(e, InvalidResponse):  # a media error the SDK did not convert
            status = getattr(e.response, "status_code", 0)
            e = api_exceptions.from_http_status(status, str(e), response=e.response)
        if isinstance(e, api_exceptions.GoogleAPICallError):
            self._raise_http(e, key, op, uri, gs, missing=missing, if_absent=if_absent)
        if isinstance(e, google.auth.exceptions.RefreshError):
            # args[0] is google-auth's message; args[1] the token endpoint's whole answer.
            said = self._clean(str(e.args[0] if e.args else e))
            if getattr(e, "retryable", False):
                raise TransientError(f"{op} {gs}: refreshing the access token failed "
                                     f"transiently ({said})", uri) from e
            raise Unauthenticated(
                f"{op} {gs}: the credentials were rejected when refreshing the access token "
                f"({said}); the key in GOOGLE_APPLICATION_CREDENTIALS may be "
                "deleted or revoked, or the login expired: create a new key or run "
                "`gcloud auth application-default login` again", uri) from e
        if isinstance(e, google.auth.exceptions.InvalidOperation):
            # The service answered 401 to the anonymous client of a bare STORAGE_EMULATOR_HOST.
            raise Unauthenticated(f"{op} {gs}: the service requires credentials, and "
                                  "STORAGE_EMULATOR_HOST without GOOGLE_APPLICATION_CREDENTIALS "
                                  "sends none; set GOOGLE_APPLICATION_CREDENTIALS", uri) from e
        if isinstance(e, google.auth.exceptions.TransportError):
            raise TransientError(f"{op} {gs}: cannot reach the token endpoint "
                                 f"({self._clean(str(e))})", uri) from e
        if isinstance(e, google.auth.exceptions.GoogleAuthError):
            raise Unauthenticated(f"{op} {gs}: {self._clean(str(e))}; {LOGIN_HINT}", uri) from e
        if isinstance(e, requests.exceptions.SSLError):
            raise BlobError(f"{op} {gs}: TLS failed ({self._clean(str(e))}); check the "
                            "endpoint's certificate or REQUESTS_CA_BUNDLE", uri) from e
        if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                          requests.exceptions.ChunkedEncodingError, ConnectionError,
                          TimeoutError)):
            raise TransientError(f"{op} {gs}: connection failed or timed out "
                                 f"({self._clean(str(e))})", uri) from e
        if isinstance(e, DataCorruption):
            raise TransientError(f"{op} {gs}: the checksum of the transferred data did not "
                                 "match; the transfer will be repeated", uri) from e
        if type(e).__module__.split(".")[0] in ("google", "requests", "urllib3"):
            raise BlobError(f"{op} {gs} failed: {self._clean(str(e))}", uri) from e
        raise e  # not the SDK's: a bug, to be seen as what it is

    def _raise_http(self, e: api_exceptions.GoogleAPICallError, key: str | None, op: str,
                    uri: str, gs: str, *, missing: str, if_absent: bool) -> NoReturn:
        status = int(e.code or 0)
        detail = self._server_message(e)
        if status == 404:
            if missing == "bucket" or not key or self._bucket_missing(detail):
                raise ContainerNotFound(f"{op} {gs}: bucket gs://{self.bucket_name} does not "
                                        "exist; create it or check the URI", self.uri) from e
            raise BlobNotFound(f"no object {gs}", uri) from e
        if status == 412:
            if if_absent:
                raise AlreadyExists(f"{gs} already exists", uri) from e
            raise PreconditionFailed(f"{gs} changed since the version that was read "
                                     "(generation precondition failed)", uri) from e
        if status == 401:
            raise Unauthenticated(f"{op} {gs}: the credentials are missing, invalid or "
                                  f"expired ({detail}); {LOGIN_HINT}", uri) from e
        if status == 403:
            found = _PERMISSION.search(detail)
            needs = f"permission {found.group(0)}" if found else "a permission"
            raise PermissionDenied(f"{op} {gs}: the caller lacks {needs} ({detail}); grant it "
                                   "on the bucket (e.g. roles/storage.objectUser) or use other "
                                   "credentials", uri) from e
        if status in _TRANSIENT_STATUS:
            err = TransientError(f"{op} {gs}: the service answered {status} ({detail})", uri)
            err.retry_after = _retry_after(e)  # type: ignore[attr-defined]
            raise err from e
        raise BlobError(f"{op} {gs} failed with {status}: {detail}", uri) from e

    def _bucket_missing(self, detail: str) -> bool:
        """Did a 404 on an object request mean that the bucket is missing?"""
        low = detail.lower()
        if "no such object" in low:
            return False
        if "bucket" in low and "not exist" in low:
            return True
        # Emulators answer a bare "Not Found" for both: ask about the bucket.  Only error
        # paths pay this request, and only against servers that do not say which it was.
        try:
            return not self._bucket().exists(retry=None, timeout=self.timeout)
        except Exception:  # no storage.buckets.get, say: the object is the likelier miss
            return False

    def _server_message(self, e: api_exceptions.GoogleAPICallError) -> str:
        response = getattr(e, "response", None)
        text = ""
        if response is not None:
            try:
                text = str(response.json()["error"]["message"])
            except Exception:
                text = ""
        if not text:
            # The SDK prefixes "METHOD URL: "; URLs of resumable sessions hold an upload_id.
            text = _METHOD_URL.sub("", str(e.message or ""))
        return self._clean(text.strip()[:500]) or f"HTTP {e.code}"

    @staticmethod
    def _clean(text: str) -> str:
        return redact(_UPLOAD_ID.sub(r"\1***", text))

    # -- primitives --------------------------------------------------------------------------

    def _get(self, key: str) -> tuple[bytes, str]:
        blob = self._bucket().blob(self._name(key))
        try:
            data = blob.download_as_bytes(retry=None, timeout=self.timeout)
        except Exception as e:
            self._raise(e, key, "GET")
        if blob.generation is not None:
            return data, str(blob.generation)
        return self._get_without_generation_header(key)

    def _get_without_generation_header(self, key: str) -> tuple[bytes, str]:
        # Real GCS sends x-goog-generation with every download; some emulators do not.  A
        # read bracketed by two equal generations is consistent (generations never repeat).
        log.debug("no x-goog-generation on GET %s; bracketing the read with two HEADs",
                  self._gs(key))
        for _ in range(10):
            before = self._stat(key).version
            blob = self._bucket().blob(self._name(key))
            try:
                data = blob.download_as_bytes(retry=None, timeout=self.timeout)
            except Exception as e:
                self._raise(e, key, "GET")
            if self._stat(key).version == before:
                return data, before
        raise TransientError(f"GET {self._gs(key)}: the object kept changing while it was "
                             "read", self.object_uri(key))

    def _put(self, key: str, data: bytes, *, if_absent: bool, if_version: str | None) -> str:
        condition: dict[str, Any] = {}
        if if_absent:
            condition["if_generation_match"] = 0
        elif if_version is not None:
            try:
                condition["if_generation_match"] = int(if_version)
            except ValueError:
                raise PreconditionFailed(
                    f"{self._gs(key)}: version {if_version!r} is not a GCS generation, so it "
                    "cannot be the object's current version", self.object_uri(key)) from None
        blob = self._bucket().blob(self._name(key))
        try:
            blob.upload_from_string(bytes(data), content_type="application/octet-stream",
                                    retry=None, timeout=self.timeout, **condition)
        except Exception as e:
            self._raise(e, key, "PUT", missing="bucket", if_absent=if_absent)
        return str(blob.generation)

    def _info(self, blob: storage.Blob, key: str) -> BlobInfo:
        modified = blob.updated or blob.time_created or datetime.fromtimestamp(0, timezone.utc)
        return BlobInfo(key, int(blob.size or 0), str(blob.generation), modified)

    def _list_page(self, prefix: str, token: str | None) -> tuple[list[BlobInfo], str | None]:
        """One page of objects.  The JSON reply is read directly: the SDK builds a ``Blob``
        per item and parses each date with a regular expression, about 0.1 ms per object,
        which made a 10,000-run search spend a second on it (docs/benchmarks.md)."""
        api_request = getattr(getattr(self.client, "_connection", None), "api_request", None)
        if api_request is None:  # another google-cloud-storage layout: the SDK's own path
            return self._list_page_sdk(prefix, token)
        query = {"prefix": self.root + prefix, "maxResults": PAGE_SIZE, "projection": "noAcl",
                 "fields": "items(name,size,generation,updated,timeCreated),nextPageToken"}
        if token:
            query["pageToken"] = token
        try:
            reply = api_request(method="GET", path=f"/b/{self.bucket_name}/o",
                                query_params=query, timeout=self.timeout, retry=None)
            items = [BlobInfo(item["name"][len(self.root):], int(item.get("size") or 0),
                              str(item["generation"]),
                              _timestamp(item.get("updated") or item.get("timeCreated")))
                     for item in reply.get("items", ()) if not item["name"].endswith("/")]
        except Exception as e:
            self._raise(e, prefix, "LIST", missing="bucket")
        return items, reply.get("nextPageToken") or None

    def _list_page_sdk(self, prefix: str, token: str | None) -> tuple[list[BlobInfo], str | None]:
        try:
            it = self.client.list_blobs(
                self.bucket_name, prefix=self.root + prefix, page_size=PAGE_SIZE,
                page_token=token, retry=None, timeout=self.timeout,
                fields="items(name,size,generation,updated,timeCreated),nextPageToken")
            page = next(it.pages, None)
            # Names ending in '/' are the folder placeholders consoles create, never our keys.
            items = [self._info(b, b.name[len(self.root):]) for b in (page or [])
                     if not b.name.endswith("/")]
        except Exception as e:
            self._raise(e, prefix, "LIST", missing="bucket")
        return items, it.next_page_token

    def _list_dir(self, prefix: str) -> tuple[list[BlobInfo], list[str]]:
        full = self.root + prefix
        files: list[BlobInfo] = []
        try:
            it = self.client.list_blobs(
                self.bucket_name, prefix=full, delimiter="/", page_size=PAGE_SIZE,
                retry=None, timeout=self.timeout,
                fields="items(name,size,generation,updated,timeCreated),prefixes,nextPageToken")
            for page in it.pages:
                files.extend(self._info(b, b.name[len(self.root):]) for b in page
                             if not b.name.endswith("/"))
            prefixes = set(it.prefixes)
        except Exception as e:
            self._raise(e, prefix, "LIST", missing="bucket")
        dirs = sorted((p[len(full):].rstrip("/") for p in prefixes),
                      key=lambda d: d.encode("utf-8"))
        return files, [d for d in dirs if d]

    def _delete(self, key: str) -> None:
        try:
            self._bucket().blob(self._name(key)).delete(retry=None, timeout=self.timeout)
        except api_exceptions.NotFound:
            return
        except Exception as e:
            self._raise(e, key, "DELETE")

    def _stat(self, key: str) -> BlobInfo:
        blob = self._bucket().blob(self._name(key))
        try:
            blob.reload(projection="noAcl", retry=None, timeout=self.timeout)
        except Exception as e:
            self._raise(e, key, "HEAD")
        return self._info(blob, key)

    def _upload_file(self, key: str, path: str) -> str:
        size = os.path.getsize(path)
        # Above the threshold a resumable upload sends CHUNK_SIZE at a time, so no more than
        # one chunk of the file is ever in memory; below it one multipart request is cheaper.
        chunk = CHUNK_SIZE if size > MULTIPART_THRESHOLD else None
        blob = self._bucket().blob(self._name(key), chunk_size=chunk)
        try:
            with open(path, "rb") as f:
                blob.upload_from_file(f, size=size, content_type="application/octet-stream",
                                      retry=None, timeout=self.timeout)
        except OSError as e:
            if getattr(e, "filename", None) == path:
                raise
            self._raise(e, key, "UPLOAD", missing="bucket")
        except Exception as e:
            self._raise(e, key, "UPLOAD", missing="bucket")
        return str(blob.generation)

    def _download_file(self, key: str, path: str) -> None:
        blob = self._bucket().blob(self._name(key))
        with open(path, "wb") as f:
            try:
                # One streamed GET: a consistent snapshot, checksum verified, written as it
                # arrives.
                blob.download_to_file(f, retry=None, timeout=self.timeout)
            except Exception as e:
                self._raise(e, key, "DOWNLOAD")

    def _create_container(self) -> None:
        try:
            self.client.create_bucket(self.bucket_name, retry=None, timeout=self.timeout)
        except api_exceptions.Conflict:
            return
        except Exception as e:
            self._raise(e, None, "CREATE BUCKET", missing="bucket")


def _retry_after(e: api_exceptions.GoogleAPICallError) -> float | None:
    response = getattr(e, "response", None)
    return retry_after(response.headers if response is not None else None)
