"""``python -m cloudtrack.cli`` runs the ``cloudtrack`` command."""

from cloudtrack.cli import main

main()
