"""`dynasparse dev-certs --out DIR`: a development CA plus server and client certificates for mTLS.

Writes ca.crt, server.crt, server.key (SAN localhost and 127.0.0.1 plus any --host), client.crt and
client.key; `dynasparse serve --tls-dir DIR` and a local operator use them. Called by the CLI.
"""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

HELP = "Generate a development CA and mTLS certificates for the worker's control port."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="directory to write the files into")
    parser.add_argument(
        "--host", action="append", default=[],
        help="extra DNS name or IP for the server certificate (repeatable)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing files")


def _split_hosts(hosts: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    dns, ips = ["localhost"], ["127.0.0.1"]
    for host in hosts:
        try:
            ipaddress.ip_address(host)
            ips.append(host)
        except ValueError:
            dns.append(host)
    return tuple(dict.fromkeys(dns)), tuple(dict.fromkeys(ips))


def run(args: argparse.Namespace) -> int:
    from dynasparse_worker.control.pki import FILE_NAMES, make_dev_bundle, write_bundle
    from dynasparse_worker.errors import UserError

    out: Path = args.out
    existing = [n for n in FILE_NAMES if (out / n).exists()]
    if existing and not args.force:
        raise UserError(f"{out} already holds {', '.join(existing)}: pass --force to overwrite "
                        "or choose another --out")
    dns, ips = _split_hosts(args.host)
    for path in write_bundle(make_dev_bundle(dns, ips), out):
        print(path)
    return 0
