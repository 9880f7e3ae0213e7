"""docs/crd-reference.md is what scripts/gen_crd_docs.py makes from the CRD now."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_committed_crd_reference_matches_the_schema():
    spec = importlib.util.spec_from_file_location("gen_crd_docs", ROOT / "scripts" / "gen_crd_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = (ROOT / "docs" / "crd-reference.md").read_text()
    assert committed == module.render(), "docs/crd-reference.md is stale: run python scripts/gen_crd_docs.py"


def test_reference_lists_the_slo_and_quality_fields():
    text = (ROOT / "docs" / "crd-reference.md").read_text()
    for field in ("spec.slo.ttftP95Ms", "spec.quality.maxLoss", "spec.replicas", "status.conditions"):
        assert f"`{field}`" in text
