"""``wasbs://<container>@<account>.blob.<suffix>[/<prefix>]`` and the ``abfss://`` form of the
same account: the account, the blob endpoint, and which credential signs — a connection
string's key or SAS, ``AZURE_STORAGE_ACCESS_KEY``, ``AZURE_STORAGE_SAS_TOKEN``, or
``DefaultAzureCredential``'s chain — decided once here, with where it came from."""

from __future__ import annotations

import re
from collections.abc import Mapping

from cloudtrack.config.common import (
    clean_prefix,
    common_settings,
    endpoint,
    first,
    malformed,
    parse_connection_string,
    read,
    split_store_uri,
)
from cloudtrack.config.model import Setting, StoreConfig
from cloudtrack.config.redaction import redact_uri
from cloudtrack.config.variables import (
    AZURE_STORAGE_ACCESS_KEY,
    AZURE_STORAGE_CONNECTION_STRING,
    AZURE_STORAGE_SAS_TOKEN,
)

_CONTAINER = re.compile(r"^(\$root|[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9])$")
_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")
#: Where Azurite serves ``UseDevelopmentStorage=true``.
DEVELOPMENT_STORAGE = "http://127.0.0.1:10000/devstoreaccount1"


def resolve_azure(uri: str, environ: Mapping[str, str]) -> StoreConfig:
    parsed = split_store_uri(uri, uri.split(":", 1)[0].lower())
    scheme = parsed.scheme.lower()
    if "@" not in parsed.netloc:
        raise malformed(uri, scheme, "no '<container>@' before the host")
    container, host = parsed.netloc.split("@", 1)
    host = host.lower()
    kind = "blob" if scheme == "wasbs" else "dfs"
    m = re.match(rf"^([a-z0-9]+)\.{kind}\.(.+)$", host)
    if not m:
        raise malformed(uri, scheme, f"host {host!r} is not <account>.{kind}.<cloud suffix>")
    account, suffix = m.group(1), m.group(2)
    if not _ACCOUNT.match(account):
        raise malformed(uri, scheme, f"{account!r} is not a valid storage account name")
    if not _CONTAINER.match(container):
        raise malformed(uri, scheme, f"{container!r} is not a valid container name")
    prefix = clean_prefix(uri, scheme, parsed.path)
    settings = common_settings(environ)
    settings.append(Setting("account", account, "uri"))
    blob_endpoint = Setting("endpoint_url", f"https://{account}.blob.{suffix}", "uri")
    conn = read(environ, AZURE_STORAGE_CONNECTION_STRING)
    if conn is not None:
        pairs = {k.lower(): v for k, v in parse_connection_string(conn).items()}
        conn_account = pairs.get("accountname")
        if conn_account is not None:
            settings.append(Setting("connection_string_account", conn_account,
                                    "env:AZURE_STORAGE_CONNECTION_STRING"))
        if "blobendpoint" in pairs:
            blob_endpoint = endpoint(uri, Setting(
                "endpoint_url", pairs["blobendpoint"].rstrip("/"),
                "env:AZURE_STORAGE_CONNECTION_STRING")) or blob_endpoint
        elif pairs.get("usedevelopmentstorage", "").lower() == "true":
            blob_endpoint = Setting("endpoint_url", DEVELOPMENT_STORAGE,
                                    "env:AZURE_STORAGE_CONNECTION_STRING")
        if "accountkey" in pairs:
            cred = "account-key"
        elif "sharedaccesssignature" in pairs:
            cred = "sas"
        else:
            cred = "credential-chain"
        settings.append(Setting("credential", cred, "env:AZURE_STORAGE_CONNECTION_STRING"))
    else:
        key = first(environ, "credential", AZURE_STORAGE_ACCESS_KEY, AZURE_STORAGE_SAS_TOKEN)
        if key is None:
            settings.append(Setting("credential", "credential-chain", "sdk-default"))
        else:
            kind_name = "account-key" if key.source.endswith("ACCESS_KEY") else "sas"
            settings.append(Setting("credential", kind_name, key.source))
    settings.append(blob_endpoint)
    return StoreConfig("azure", scheme, container, prefix, redact_uri(uri), tuple(settings), environ)
