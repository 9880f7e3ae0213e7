"""Writes docs/crd-reference.md from the AdaptiveModel CRD's schema (charts/dynasparse/crds/).

Run after editing the CRD: `python scripts/gen_crd_docs.py`. tests/docs/test_crd_reference_current.py
fails when the committed reference is stale, so the README's reference never drifts from the schema.
"""

from __future__ import annotations

import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
CRD = ROOT / "charts" / "dynasparse" / "crds" / "adaptivemodels.yaml"
OUT = ROOT / "docs" / "crd-reference.md"


def _constraints(schema: dict) -> str:
    parts = []
    for key, label in (("minimum", "≥"), ("maximum", "≤"), ("exclusiveMinimum", ">"),
                       ("exclusiveMaximum", "<"), ("minLength", "length ≥"), ("maxLength", "length ≤"),
                       ("minItems", "items ≥"), ("maxItems", "items ≤"), ("pattern", "matches")):
        if key in schema and not isinstance(schema[key], bool):
            parts.append(f"{label} `{schema[key]}`")
    if schema.get("exclusiveMinimum") is True and "minimum" in schema:
        parts = [p.replace("≥", ">", 1) if p.startswith("≥") else p for p in parts]
    if "enum" in schema:
        parts.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
    if "default" in schema:
        parts.append(f"default `{schema['default']}`")
    for rule in schema.get("x-kubernetes-validations", []):
        parts.append(f"rule: {rule.get('message') or rule['rule']}")
    return "; ".join(parts)


def _type(schema: dict) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = schema.get("type", "object")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    return kind


def _rows(schema: dict, prefix: str, required: set[str]) -> list[str]:
    rows = []
    for name, child in (schema.get("properties") or {}).items():
        path = f"{prefix}.{name}" if prefix else name
        description = " ".join((child.get("description") or "").split())
        flag = " **(required)**" if name in required else ""
        rows.append(f"| `{path}`{flag} | {_type(child)} | {description} | {_constraints(child)} |")
        target = child.get("items", {}) if child.get("type") == "array" else child
        if target.get("properties"):
            rows.extend(_rows(target, path + ("[]" if child.get("type") == "array" else ""),
                              set(target.get("required", []))))
    return rows


def render() -> str:
    crd = yaml.safe_load(CRD.read_text())
    names = crd["spec"]["names"]
    version = crd["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    lines = [
        "# AdaptiveModel reference",
        "",
        f"Generated from `charts/dynasparse/crds/adaptivemodels.yaml` by `scripts/gen_crd_docs.py`;"
        " do not edit by hand.",
        "",
        f"`{crd['spec']['group']}/{version['name']}`, kind `{names['kind']}`, "
        f"{crd['spec']['scope'].lower()}, short name `{', '.join(names.get('shortNames', []))}`.",
        "",
        "`kubectl get am` columns: " + ", ".join(
            f"**{c['name'].upper()}** ({c.get('description', c['jsonPath'])})"
            for c in version.get("additionalPrinterColumns", [])),
        "",
    ]
    object_rules = [r.get("message") or r["rule"] for r in root.get("x-kubernetes-validations", [])]
    if object_rules:
        lines += ["Rules on the whole object:", "", *(f"* {rule}" for rule in object_rules), ""]
    for section in ("spec", "status"):
        schema = root["properties"].get(section)
        if not schema:
            continue
        lines += [f"## {section}", "", "| field | type | meaning | constraints |", "|---|---|---|---|"]
        lines += _rows(schema, section, set(schema.get("required", [])))
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    OUT.write_text(render())
    print(OUT.relative_to(ROOT))
    sys.exit(0)
