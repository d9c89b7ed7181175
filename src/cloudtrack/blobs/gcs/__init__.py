"""The ``gs://`` backend: :class:`GcsBlobs` (``blobs.py``), its google-cloud-storage client
(``client.py``), how GCS's errors read (``errors.py``) and the fast listing path
(``listing.py``)."""

from cloudtrack.blobs.gcs.blobs import GcsBlobs
from cloudtrack.blobs.gcs.client import DEFAULT_ENDPOINT
from cloudtrack.blobs.gcs.errors import TABLE, error_facts

__all__ = ["DEFAULT_ENDPOINT", "TABLE", "GcsBlobs", "error_facts"]
