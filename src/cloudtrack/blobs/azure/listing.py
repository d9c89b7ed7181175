"""Azure's fast listing: one List Blobs page sent through the container client's own pipeline
(credentials, timeouts, TLS as configured: :mod:`~cloudtrack.blobs.azure.raw`), its XML read
with ElementTree.

The SDK's generic deserializer spends over a millisecond per listed blob, which made a
10,000-run search spend seconds in it; this reads the four fields cloudtrack uses.  An answer
that is not a listing at all (empty, cut off, not XML) is :class:`IncompleteAnswer`, a
transient failure — never an empty listing; one with an unexpected field goes to the SDK.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, unquote

from cloudtrack.blobs.azure.raw import RawPathUnavailable, send
from cloudtrack.blobs.base import BlobInfo
from cloudtrack.blobs.sdk_errors import IncompleteAnswer


class ListingNotUnderstood(RawPathUnavailable):
    """The fast listing path cannot read this reply; the SDK's path can."""


def etag(value: str | None) -> str:
    """An ETag without the quotes headers carry (listings return it bare)."""
    return (value or "").strip('"')


def modified(value: datetime | None) -> datetime:
    if value is None:
        return datetime.fromtimestamp(0, tz=timezone.utc)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def is_folder(metadata: Mapping[str, Any] | None) -> bool:
    """On accounts with a hierarchical namespace (ADLS Gen2) directories are zero-length blobs
    marked with this metadata; the blob API lists and stats them like objects."""
    return any(k.lower() == "hdi_isfolder" and str(v).lower() == "true"
               for k, v in (metadata or {}).items())


def _name(node: ET.Element) -> str:
    name_node = node.find("Name")
    name = (name_node.text or "") if name_node is not None else ""
    return unquote(name) if name_node is not None and name_node.get("Encoded") == "true" else name


def parse_blob_listing(body: bytes, root: str) -> tuple[list[BlobInfo], list[str], str | None]:
    """The blobs of a List Blobs reply (folders of a hierarchical namespace left out), the
    names of its BlobPrefix entries (a listing with a delimiter), and the next page's
    marker."""
    try:
        doc = ET.fromstring(body)
    except ET.ParseError as e:
        raise IncompleteAnswer(f"a listing that is not XML ({len(body)} bytes: {e})") from e
    blobs = doc.find("Blobs")
    if doc.tag != "EnumerationResults" or blobs is None:
        raise IncompleteAnswer(f"a listing whose root is {doc.tag!r}, without Blobs")
    items = []
    try:
        for blob in blobs.iter("Blob"):
            name = _name(blob)
            metadata = blob.find("Metadata")
            if metadata is not None and is_folder({m.tag: m.text for m in metadata}):
                continue
            props = blob.find("Properties")
            if props is None:
                raise ListingNotUnderstood(f"blob {name!r} has no properties")
            when = parsedate_to_datetime(props.findtext("Last-Modified") or "")
            items.append(BlobInfo(name[len(root):], int(props.findtext("Content-Length") or 0),
                                  etag(props.findtext("Etag")), modified(when)))
    except (TypeError, ValueError) as e:
        raise ListingNotUnderstood(f"unexpected listing field: {e}") from e
    prefixes = [_name(p) for p in blobs.findall("BlobPrefix")]
    return items, prefixes, doc.findtext("NextMarker") or None


def list_page(container: Any, prefix: str, token: str | None, page_size: int, root: str, *,
              delimiter: str | None = None) -> tuple[list[BlobInfo], list[str], str | None]:
    """One page of ``container`` (a ContainerClient) under ``prefix`` (the full name prefix):
    its blobs, its BlobPrefix names (with ``delimiter``) and the next page's marker.

    Raises :class:`ListingNotUnderstood` (a :class:`RawPathUnavailable`) when the SDK's
    internals or the reply's fields are not what this expects, and the caller lists through
    the SDK instead; :class:`IncompleteAnswer` for an answer that is no listing; the service's
    error answers raise the SDK's own :class:`HttpResponseError`.
    """
    params = {"restype": "container", "comp": "list", "include": "metadata",
              "maxresults": str(page_size)}
    # Values go into the URL as given: quoted here, as the SDK's own serializer does.
    if prefix:
        params["prefix"] = quote(prefix, safe="")
    if token:
        params["marker"] = quote(token, safe="")
    if delimiter:
        params["delimiter"] = quote(delimiter, safe="")
    response = send(container, params=params, headers={"Accept": "application/xml"})
    body = response.read() if hasattr(response, "read") else response.body()
    return parse_blob_listing(body, root)
