"""The `dynasparse` console script: one subcommand per job, each imported only when it runs.

A subcommand is a module with `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
Modules keep heavy imports (torch, kopf) inside `run`, so `dynasparse --help` and the operator's
commands never load torch. An exception whose class sets `user_error = True` is printed as one line
(`error: ...`) with exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module path. Order is the order of `dynasparse --help`.
COMMANDS: dict[str, str] = {
    "demo": "dynasparse.commands.demo",
    "serve": "dynasparse_worker.commands.serve",
    "eval": "dynasparse_worker.commands.eval",
    "calibrate": "dynasparse_worker.commands.calibrate",
    "bench": "dynasparse_worker.commands.bench",
    "dev-certs": "dynasparse_worker.commands.dev_certs",
    "operator": "dynasparse_operator.commands.run",
    "dev-cluster": "dynasparse.commands.dev_cluster",
    "scale-bench": "dynasparse.commands.scale_bench",
}


def _load(module_path: str):
    try:
        return importlib.import_module(module_path)
    except ModuleNotFoundError as exc:
        if exc.name and module_path.startswith(exc.name):
            return None  # the command is not built yet
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynasparse",
        description="Resource-adaptive LLM inference through dynamic sparsity.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_path in COMMANDS.items():
        module = _load(module_path)
        if module is None:
            continue
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the user_error marker decides
        if getattr(type(exc), "user_error", False):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
