"""A real freedesktop Secret Service (gnome-keyring on a private D-Bus), for keyring tests."""

from backends.keyring.service import KEYRING_BACKEND, SecretService, SecretServiceError

__all__ = ["KEYRING_BACKEND", "SecretService", "SecretServiceError"]
