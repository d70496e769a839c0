"""``python -m rwmaps_cli`` runs the ``rwmaps`` command."""

from .cli import main

main()
