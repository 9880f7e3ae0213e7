"""Subcommands of `dynasparse` that belong to the operator (see dynasparse/cli.py)."""
