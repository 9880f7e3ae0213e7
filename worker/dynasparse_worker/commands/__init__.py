"""Subcommands of `dynasparse` that belong to the worker (see dynasparse/cli.py)."""
