"""``python -m cloudtrack.config``: print the README's configuration reference."""

from cloudtrack.config.reference import reference_markdown

print(reference_markdown(), end="")
