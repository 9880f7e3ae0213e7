"""Subcommands of `dynasparse` that belong to the application layer (see dynasparse/cli.py)."""
