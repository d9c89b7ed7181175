"""The ``wasbs://``/``abfss://`` backend: :class:`AzureBlobs` (``blobs.py``), its
azure-storage-blob client (``client.py``), the service's error table (``errors.py``) and the
fast listing path (``listing.py``)."""

from cloudtrack.blobs.azure.blobs import AzureBlobs
from cloudtrack.blobs.azure.errors import CODES, DATA_ROLE, TABLE, error_facts

__all__ = ["CODES", "DATA_ROLE", "TABLE", "AzureBlobs", "error_facts"]
