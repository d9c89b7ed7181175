"""Requests sent through an azure-storage-blob client's own pipeline — its credentials,
timeouts, TLS and (disabled) retries, as configured — for the answers cloudtrack reads itself:
listings (``listing.py``) and downloads (``download.py``).

The pipeline is internal to the SDK, so it is looked for, not assumed: another layout raises
:class:`RawPathUnavailable`, and the caller goes through the SDK's public API instead.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest


class RawPathUnavailable(Exception):
    """This SDK's internals (or this answer) are not what the raw path expects; the SDK's
    public API can still do the work."""


def _error_message(body: bytes) -> str:
    try:
        return (ET.fromstring(body).findtext("Message") or "").strip()
    except ET.ParseError:
        return ""


def send(client: Any, *, params: Mapping[str, str] | None = None,
         headers: Mapping[str, str] | None = None, stream: bool = False,
         ok: tuple[int, ...] = (200,)) -> Any:
    """``GET`` the resource of ``client`` (a ContainerClient or BlobClient) with ``params`` and
    ``headers``; the answer (azure-core's HttpResponse).  An answer whose status is not in
    ``ok`` raises the SDK's own :class:`HttpResponseError`, as the SDK would."""
    generated = getattr(client, "_client", None)
    config = getattr(generated, "_config", None)
    pipeline_client = getattr(generated, "_client", None)
    if config is None or pipeline_client is None or not hasattr(pipeline_client, "_pipeline") \
            or not isinstance(getattr(config, "url", None), str):
        raise RawPathUnavailable("this azure-storage-blob has another internal layout")
    request = HttpRequest("GET", config.url, params=dict(params or {}),
                          headers={"x-ms-version": config.version, **(headers or {})})
    request.url = pipeline_client.format_url(request.url)
    response = pipeline_client._pipeline.run(request, stream=stream).http_response
    if response.status_code not in ok:
        body = response.read()
        raise HttpResponseError(message=_error_message(body) or response.reason,
                                response=response)
    return response
