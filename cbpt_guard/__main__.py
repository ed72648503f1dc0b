"""``python -m cbpt_guard`` runs the CLI."""

from cbpt_guard.cli.main import main

main()
