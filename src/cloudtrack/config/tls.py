"""How a client verifies TLS, worked out once from the environment.

Each kind of endpoint has a :class:`Trust`: the variables that decide verification, in the
order its client reads them — a CA bundle to trust, or a switch that turns verification off.
:func:`cloudtrack.config.resolve` applies the store's (``StoreConfig.tls_verify``); the blob
clients and every probe of the doctor use that one value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from cloudtrack.config.variables import AWS_CA_BUNDLE, MLFLOW_S3_IGNORE_TLS


@dataclass(frozen=True)
class TrustVariable:
    name: str
    #: ``ca``: names a CA bundle (file or directory) to trust; ``off``: true turns checks off.
    role: Literal["ca", "off"]


@dataclass(frozen=True)
class Trust:
    """The variables that decide TLS verification for one kind of endpoint, first wins."""

    variables: tuple[TrustVariable, ...] = ()

    def verify(self, environ: Mapping[str, str]) -> bool | str:
        """False (verification off), the CA bundle to trust, or True (the default bundle)."""
        for var in self.variables:
            value = environ.get(var.name)
            if not value:
                continue
            if var.role == "ca":
                return value
            # resolve() has refused a malformed switch of a store already; MLflow's client
            # takes anything else for false, and so does this.
            if value.strip().lower() in ("1", "true", "yes", "on"):
                return False
        return True

    @property
    def ca_variable(self) -> str | None:
        """The variable to name when a certificate is not trusted."""
        return next((v.name for v in self.variables if v.role == "ca"), None)

    @property
    def insecure_switch(self) -> str | None:
        """``NAME=true`` that turns verification off (for test servers), if there is one."""
        return next((f"{v.name}=true" for v in self.variables if v.role == "off"), None)


def ca(name: str) -> TrustVariable:
    return TrustVariable(name, "ca")


def off(name: str) -> TrustVariable:
    return TrustVariable(name, "off")


#: What ``requests`` reads by itself (``Session.merge_environment_settings``).
REQUESTS = (ca("REQUESTS_CA_BUNDLE"), ca("CURL_CA_BUNDLE"))

#: botocore: MLflow's switch first, then AWS's bundle, then what requests would read.  (A
#: profile's ``ca_bundle`` in ~/.aws/config still applies when this finds nothing.)
S3 = Trust((off(MLFLOW_S3_IGNORE_TLS.name), ca(AWS_CA_BUNDLE.name), ca("REQUESTS_CA_BUNDLE")))
#: azure-core's requests transport, given ``SSL_CERT_FILE`` too (OpenSSL's variable, which
#: requests' own bundle would otherwise shadow).
AZURE = Trust((ca("REQUESTS_CA_BUNDLE"), ca("SSL_CERT_FILE"), ca("CURL_CA_BUNDLE")))
#: google-cloud-storage's requests session.
GCS = Trust(REQUESTS)
#: A local directory: nothing to verify.
NONE = Trust()
#: MLflow's REST client (``MlflowHostCreds.verify``): a server certificate wins over the
#: insecure switch, then requests' own variables.
MLFLOW_SERVER = Trust((ca("MLFLOW_TRACKING_SERVER_CERT_PATH"), off("MLFLOW_TRACKING_INSECURE_TLS"),
                       *REQUESTS))
