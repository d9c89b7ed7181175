"""Secrets out of text: passwords in URIs, SAS signatures, account keys, bearer tokens."""

from __future__ import annotations

import re
import urllib.parse

_SECRET_QUERY_KEYS = {"sig", "signature", "x-amz-signature", "x-amz-credential",
                      "x-amz-security-token", "token", "access_token", "code", "password",
                      "accountkey", "sharedaccesssignature", "client_secret"}
_SECRET_PAIR = re.compile(
    r"(?i)\b(AccountKey|SharedAccessSignature|sig|password|secret|token|access_token|"
    r"x-amz-signature|x-amz-security-token|client_secret)=([^;&\s\"']+)"
)


def redact(text: str) -> str:
    """Remove passwords in URIs, SAS signatures, keys and tokens from free text."""
    text = re.sub(r"(?i)([a-z][a-z0-9+.-]*://[^/\s:@]*:)([^@/\s]+)@", r"\1***@", text)
    text = _SECRET_PAIR.sub(lambda m: f"{m.group(1)}=***", text)
    text = re.sub(r"(?i)(Bearer\s+)[A-Za-z0-9._~+/=-]+", r"\1***", text)
    return text


def redact_uri(uri: str) -> str:
    """``uri`` with its password and secret query values replaced by ``***``; a URI without
    secrets comes back exactly as written."""
    try:
        parsed = urllib.parse.urlsplit(uri)
    except ValueError:
        return redact(uri)
    netloc = parsed.netloc
    if "@" in netloc and ":" in netloc.split("@", 1)[0]:
        user = netloc.split("@", 1)[0].split(":", 1)[0]
        netloc = f"{user}:***@{netloc.split('@', 1)[1]}"
    query = parsed.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(
            f"{k}={'***' if k.lower() in _SECRET_QUERY_KEYS else v}" for k, v in pairs
        )
    if netloc == parsed.netloc and query == parsed.query:
        return redact(uri)  # nothing structural to hide; keep the URI exactly as written
    return urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path, query, parsed.fragment))
