"""Regenerates the Python stubs in proto/dynasparse_proto from proto/dynasparse_proto/v1/*.proto.

Run after editing a .proto file: `python scripts/gen_proto.py`. The stubs are committed so that
installing dynasparse needs no protoc; tests/test_proto_stubs_current.py fails when they are stale.
"""

from __future__ import annotations

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"
OUT = PROTO_ROOT / "dynasparse_proto"


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Runs protoc (from grpcio-tools) into out_dir and rewrites imports to the package's name."""
    from grpc_tools import protoc

    include = OUT  # files are named v1/x.proto (their proto package is dynasparse.v1), beside their stubs
    sources = sorted(str(p.relative_to(include)) for p in include.rglob("*.proto"))
    status = protoc.main(
        ["protoc", f"-I{include}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
         f"--grpc_python_out={out_dir}", *sources]
    )
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    written = []
    for path in sorted(out_dir.rglob("*_pb2*.py*")):
        text = path.read_text()
        # protoc writes `from v1 import x_pb2`; the installed package is dynasparse_proto.
        text = re.sub(r"^from v1 import", "from dynasparse_proto.v1 import", text, flags=re.M)
        path.write_text(text)
        written.append(path)
    for folder in {p.parent for p in written}:
        init = folder / "__init__.py"
        if not init.exists():
            init.write_text("")
    return written


if __name__ == "__main__":
    for path in generate(OUT):
        print(path.relative_to(ROOT))
    sys.exit(0)
