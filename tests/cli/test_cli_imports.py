"""The command line builds its parser without any subcommand's heavy packages (they load in `run`),
so `dynasparse bench` or `calibrate` works on a machine without the HTTP server's packages."""

from __future__ import annotations

import subprocess
import sys


def test_every_subcommand_parses_without_the_http_server_packages():
    probe = ("import sys\n"
             "for name in ('pydantic', 'fastapi', 'uvicorn', 'starlette'):\n"
             "    sys.modules[name] = None  # importing any of them now raises ImportError\n"
             "from dynasparse.cli import build_parser\n"
             "parser = build_parser()\n"
             "parser.parse_args(['serve', '--max-body-bytes', '2048'])\n"
             "print('parsed')\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "parsed"
