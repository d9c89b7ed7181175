"""The GCS emulator cloudtrack tests against: fake-gcs-server behind a front (``front.py``)
that authenticates with OAuth2 service-account keys and enforces generation preconditions.
Start it with :class:`backends.gcs.service.GcsEmulator`."""
