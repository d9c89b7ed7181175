"""The README's configuration reference, generated from the backend table and the variables
(``python -m cloudtrack.config``; a test keeps the README identical)."""

from __future__ import annotations

from cloudtrack.config.backends import BACKENDS
from cloudtrack.config.variables import VARIABLES


def reference_markdown() -> str:
    lines = ["| URI | backend |", "|---|---|"]
    for spec in BACKENDS:
        lines += [f"| `{u.form}` | {spec.name} |" for u in spec.uris]
    lines += ["", "| variable | backend | meaning | default |", "|---|---|---|---|"]
    for var in VARIABLES:
        lines.append(f"| `{var.name}` | {var.backend} | {var.meaning} | {var.default or '—'} |")
    return "\n".join(lines) + "\n"
