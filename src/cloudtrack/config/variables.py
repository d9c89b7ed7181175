"""Every environment variable cloudtrack reads, declared once.

The README's configuration reference is generated from :data:`VARIABLES`
(``python -m cloudtrack.config``).  Variables the SDKs read by themselves (the AWS credential
chain, ``GOOGLE_APPLICATION_CREDENTIALS``' fallbacks, ``AZURE_CLIENT_ID`` …) are left to the
SDKs; this lists the ones whose source cloudtrack reports.
"""

from __future__ import annotations

from cloudtrack.config.model import EnvVar


def _v(name: str, backend: str, meaning: str, default: str = "", secret: bool = False) -> EnvVar:
    return EnvVar(name, backend, meaning, default, secret)


MLFLOW_S3_ENDPOINT_URL = _v("MLFLOW_S3_ENDPOINT_URL", "s3",
                            "S3-compatible endpoint (MinIO, moto …); wins over the AWS variables")
AWS_ENDPOINT_URL_S3 = _v("AWS_ENDPOINT_URL_S3", "s3", "S3 endpoint, as the AWS SDKs read it")
AWS_ENDPOINT_URL = _v("AWS_ENDPOINT_URL", "s3", "endpoint for every AWS service")
MLFLOW_S3_IGNORE_TLS = _v("MLFLOW_S3_IGNORE_TLS", "s3",
                          "`true` turns TLS verification off (self-signed endpoints)", "false")
AWS_CA_BUNDLE = _v("AWS_CA_BUNDLE", "s3", "CA bundle to trust for the S3 endpoint")
MLFLOW_S3_UPLOAD_EXTRA_ARGS = _v("MLFLOW_S3_UPLOAD_EXTRA_ARGS", "s3",
                                 'JSON of extra PutObject arguments, e.g. `{"ServerSideEncryption": "aws:kms"}`')
AWS_REGION = _v("AWS_REGION", "s3", "region of the bucket's endpoint")
AWS_DEFAULT_REGION = _v("AWS_DEFAULT_REGION", "s3", "region, when AWS_REGION is unset")
AWS_PROFILE = _v("AWS_PROFILE", "s3", "named profile of ~/.aws/config and ~/.aws/credentials")
AWS_ACCESS_KEY_ID = _v("AWS_ACCESS_KEY_ID", "s3", "access key (else profiles, SSO, web identity, instance metadata)")
AWS_SECRET_ACCESS_KEY = _v("AWS_SECRET_ACCESS_KEY", "s3", "secret key for AWS_ACCESS_KEY_ID", secret=True)
AWS_SESSION_TOKEN = _v("AWS_SESSION_TOKEN", "s3", "STS session token", secret=True)

STORAGE_EMULATOR_HOST = _v("STORAGE_EMULATOR_HOST", "gcs", "GCS emulator address, e.g. `http://127.0.0.1:4443`")
API_ENDPOINT_OVERRIDE = _v("API_ENDPOINT_OVERRIDE", "gcs", "GCS JSON API endpoint, as google-cloud-storage reads it")
GOOGLE_APPLICATION_CREDENTIALS = _v("GOOGLE_APPLICATION_CREDENTIALS", "gcs",
                                    "service-account or external-account key file (else Application Default Credentials)")
GOOGLE_CLOUD_PROJECT = _v("GOOGLE_CLOUD_PROJECT", "gcs", "project for requests that need one")

AZURE_STORAGE_CONNECTION_STRING = _v("AZURE_STORAGE_CONNECTION_STRING", "azure",
                                     "connection string (key, SAS, or endpoints only — then the credential chain signs)", secret=True)
AZURE_STORAGE_ACCESS_KEY = _v("AZURE_STORAGE_ACCESS_KEY", "azure", "account key for the account in the URI", secret=True)
AZURE_STORAGE_SAS_TOKEN = _v("AZURE_STORAGE_SAS_TOKEN", "azure", "SAS token for the account in the URI", secret=True)

CLOUDTRACK_CONNECT_TIMEOUT = _v("CLOUDTRACK_CONNECT_TIMEOUT", "all", "seconds to wait for a connection", "5")
CLOUDTRACK_READ_TIMEOUT = _v("CLOUDTRACK_READ_TIMEOUT", "all",
                             "seconds to wait for the next bytes of an answer (a transfer that keeps moving is never cut)",
                             "10")
CLOUDTRACK_STRICT = _v("CLOUDTRACK_STRICT", "all",
                       "`true`: every logging call is durable when it returns (else buffered, flushed about once a second, at end_run and at exit)",
                       "false")
CLOUDTRACK_MAX_ATTEMPTS = _v("CLOUDTRACK_MAX_ATTEMPTS", "all", "attempts for a transient failure (5xx, 429, reset, timeout)", "5")
CLOUDTRACK_RETRY_DEADLINE = _v("CLOUDTRACK_RETRY_DEADLINE", "all",
                               "seconds one storage operation may spend waiting (on answers that do not come, and between retries) before it fails; a retry starts only if its connect + read timeouts still fit",
                               "30")
CLOUDTRACK_KEYRING_TIMEOUT = _v("CLOUDTRACK_KEYRING_TIMEOUT", "all",
                                "seconds a call to the OS keyring (a `cloudtrack login`) may take before it fails with a message instead of hanging",
                                "5")
CLOUDTRACK_KEYRING = _v("CLOUDTRACK_KEYRING", "all",
                        "`off`: ignore the logins of `cloudtrack login` (environment variables and the SDKs' chains only)",
                        "on")
CLOUDTRACK_READ_CACHE = _v("CLOUDTRACK_READ_CACHE", "all",
                            "`off`: no local file of the run heads searches read (kept for the next process, each used only at the version the store lists)",
                            "on")
CLOUDTRACK_SERVER_WARMUP = _v("CLOUDTRACK_SERVER_WARMUP", "all",
                               "runs an `mlflow server` worker on a store reads ahead as it starts, from the experiments written to most recently, so the UI's first pages need no cold read; `0` or `off`: none",
                               "20000")
CLOUDTRACK_CONFIG_DIR = _v("CLOUDTRACK_CONFIG_DIR", "all",
                           "the folder of `logins.json` (and of `credentials.json` with --insecure-storage)",
                           "$XDG_CONFIG_HOME/cloudtrack or ~/.config/cloudtrack")

VARIABLES: tuple[EnvVar, ...] = tuple(
    value for value in list(globals().values()) if isinstance(value, EnvVar)
)
