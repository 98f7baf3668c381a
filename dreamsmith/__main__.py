"""``python -m dreamsmith`` runs the CLI."""

from dreamsmith.cli import main

main()
