"""The ``s3://`` backend: :class:`S3Blobs` (``blobs.py``), its botocore client (``client.py``),
S3's error table (``errors.py``) and the fast listing parser (``listing.py``)."""

from cloudtrack.blobs.s3.blobs import CONFLICT_ATTEMPTS, S3Blobs
from cloudtrack.blobs.s3.client import SMALL_BODY, make_client, upload_extra_args
from cloudtrack.blobs.s3.errors import CODES, TABLE, error_facts

__all__ = ["CODES", "CONFLICT_ATTEMPTS", "SMALL_BODY", "TABLE", "S3Blobs", "error_facts",
           "make_client", "upload_extra_args"]
