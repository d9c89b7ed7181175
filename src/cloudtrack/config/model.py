"""What a resolved store is: :class:`StoreConfig`, its :class:`Setting` values with their
sources, and the :class:`EnvVar` declarations the resolvers read them from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

#: A backend's name (``file``, ``s3``, ``gcs``, ``azure``): a row of
#: :data:`cloudtrack.config.backends.BACKENDS`.
Backend = str


@dataclass(frozen=True)
class EnvVar:
    """An environment variable cloudtrack reads (or reports the SDK reading)."""

    name: str
    backend: str
    meaning: str
    default: str = ""
    secret: bool = False


@dataclass(frozen=True)
class Setting:
    """One resolved value and where it came from."""

    name: str
    value: str | int | float | bool | None
    #: ``uri``, ``argument``, ``env:<NAME>``, ``connection-string``, ``sdk-default`` or ``default``.
    source: str
    secret: bool = False

    def shown(self) -> str:
        """The value as it may appear in output."""
        if self.value is None:
            return "(unset)"
        return "***" if self.secret else str(self.value)

    def __repr__(self) -> str:
        return f"Setting({self.name}={self.shown()!r}, source={self.source!r})"


@dataclass(frozen=True)
class StoreConfig:
    """Everything a backend needs to open a store, with the origin of every value."""

    backend: Backend
    scheme: str
    #: Bucket or container; for ``file``, the absolute root directory.
    container: str
    #: Key prefix inside the container, without leading or trailing '/'; '' for none.
    prefix: str
    display_uri: str
    settings: tuple[Setting, ...] = ()
    #: The environment the values were read from; backends read SDK variables from it too.
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    #: How every client of this store verifies TLS: False (off), a CA bundle path, or True
    #: (the default bundle).  Worked out once, by :func:`cloudtrack.config.resolve`, from the
    #: backend's :class:`~cloudtrack.config.tls.Trust`; the blob clients and the doctor's
    #: probes all use it.
    tls_verify: bool | str = field(default=True, repr=False)

    def setting(self, name: str) -> Setting | None:
        for s in self.settings:
            if s.name == name:
                return s
        return None

    def get(self, name: str, default: object = None) -> object:
        s = self.setting(name)
        return default if s is None or s.value is None else s.value

    def key(self, key: str) -> str:
        """``key`` with the store's prefix in front: the name inside the container."""
        return f"{self.prefix}/{key}" if self.prefix else key

    def __str__(self) -> str:
        return self.display_uri
