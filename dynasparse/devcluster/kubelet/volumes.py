"""Write a pod's volumes into its directory, as a kubelet would mount them.

Called by `runtime` before a pod's containers start. ConfigMap, Secret, downward-API and projected
volumes (including the service-account token a projected volume asks for) are written as files under
`<pod dir>/volumes/<volume name>/`; emptyDir (and anything else) is an empty directory; hostPath is
the host path itself. Returns volume name -> local directory, which `podspec.mount_map` turns into the
path rewrites. `runtime` calls it again every REFRESH_S, as a kubelet's periodic sync does, so a
renewed Secret (a certificate, say) reaches a running pod; each file is replaced atomically and only
when its content changed, so a reader never sees half a file.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Callable

from dynasparse.devcluster.kubelet.podspec import Lookup, NotReadyYet, field_value

TokenFn = Callable[[str | None, int], str]  # (audience, expirationSeconds) -> token
REFRESH_S = 60.0


def _write(directory: Path, rel: str, data: bytes, mode: int | None) -> None:
    path = directory / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = mode if mode is not None else 0o644
    if path.is_file() and path.read_bytes() == data:
        path.chmod(mode)
        return
    staged = path.with_name(f".{path.name}.new")
    staged.write_bytes(data)
    staged.chmod(mode)
    os.replace(staged, path)


def _raw_data(obj: dict, kind: str) -> dict[str, bytes]:
    if kind == "Secret":
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    out = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
    out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return out


def _keyed(directory: Path, source: dict, kind: str, name: str, namespace: str, lookup: Lookup,
           default_mode: int | None) -> None:
    obj = lookup(kind, namespace, name)
    if obj is None:
        if source.get("optional"):
            return
        raise NotReadyYet(f"{kind} {namespace}/{name} not found (volume cannot be mounted)")
    data = _raw_data(obj, kind)
    items = source.get("items")
    if items:
        for item in items:
            if item["key"] not in data:
                if source.get("optional"):
                    continue
                raise NotReadyYet(f"key {item['key']!r} missing in {kind} {namespace}/{name}")
            _write(directory, item["path"], data[item["key"]], item.get("mode", default_mode))
    else:
        for key, value in data.items():
            _write(directory, key, value, default_mode)


def _downward(directory: Path, source: dict, pod: dict, pod_ip: str, mode: int | None) -> None:
    for item in source.get("items") or []:
        if "fieldRef" in item:
            value = field_value(pod, item["fieldRef"]["fieldPath"], pod_ip)
            _write(directory, item["path"], value.encode(), item.get("mode", mode))


def materialise(pod: dict, pod_dir: Path, pod_ip: str, lookup: Lookup, token: TokenFn) -> dict[str, str]:
    """Write every volume of `pod`; raise NotReadyYet when a required source is missing."""
    namespace = pod["metadata"]["namespace"]
    out: dict[str, str] = {}
    for volume in pod["spec"].get("volumes") or []:
        name = volume["name"]
        if "hostPath" in volume:
            out[name] = volume["hostPath"]["path"]
            continue
        directory = pod_dir / "volumes" / name
        directory.mkdir(parents=True, exist_ok=True)
        out[name] = str(directory)
        if "configMap" in volume:
            src = volume["configMap"]
            _keyed(directory, src, "ConfigMap", src.get("name", ""), namespace, lookup, src.get("defaultMode"))
        elif "secret" in volume:
            src = volume["secret"]
            _keyed(directory, src, "Secret", src.get("secretName", ""), namespace, lookup,
                   src.get("defaultMode"))
        elif "downwardAPI" in volume:
            _downward(directory, volume["downwardAPI"], pod, pod_ip, volume["downwardAPI"].get("defaultMode"))
        elif "projected" in volume:
            projected = volume["projected"]
            mode = projected.get("defaultMode")
            for source in projected.get("sources") or []:
                if "serviceAccountToken" in source:
                    sat = source["serviceAccountToken"]
                    value = token(sat.get("audience"), int(sat.get("expirationSeconds", 3600)))
                    _write(directory, sat["path"], value.encode(), mode if mode is not None else 0o600)
                elif "configMap" in source:
                    src = source["configMap"]
                    _keyed(directory, src, "ConfigMap", src.get("name", ""), namespace, lookup, mode)
                elif "secret" in source:
                    src = source["secret"]
                    _keyed(directory, src, "Secret", src.get("name", ""), namespace, lookup, mode)
                elif "downwardAPI" in source:
                    _downward(directory, source["downwardAPI"], pod, pod_ip, mode)
        # emptyDir, persistentVolumeClaim, ephemeral, ...: an empty directory is the best we can do.
    return out
