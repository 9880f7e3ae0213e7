"""The committed gRPC stubs match what protoc generates from the committed .proto files."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_equal_freshly_generated_ones(tmp_path):
    generated = _load_generator().generate(tmp_path)
    assert generated, "protoc produced no files"
    committed_root = ROOT / "proto" / "dynasparse_proto"
    for path in generated:
        committed = committed_root / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} missing: run python scripts/gen_proto.py"
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run python scripts/gen_proto.py"


def test_control_service_is_in_package_dynasparse_v1():
    from dynasparse_proto import control_pb2

    service = control_pb2.DESCRIPTOR.services_by_name["Control"]
    assert service.full_name == "dynasparse.v1.Control"
    assert set(service.methods_by_name) == {"Session", "GetStatus"}
