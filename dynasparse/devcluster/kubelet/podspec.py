"""Pure decisions about a pod's containers: do we run it, with which argv, environment and paths.

Called by `runtime` when it starts a container. No I/O: ConfigMaps and Secrets come in through a
`lookup(kind, namespace, name)` callable, so the tests in tests/cluster/ exercise every rule here.

Path rewriting: pods run outside any container, so a volume mounted at `/etc/dynasparse/tls` really
lives in the pod's directory. Every occurrence of a mount path in the container's args and env values
is rewritten to the local directory (longest mount path first). Files that contain paths are not
rewritten; programs should take paths from args or env. The host interpreter that `python` and
`dynasparse` commands map onto is the kubelet's, not the pod's, so it is never rewritten: a venv
under /tmp must keep working in a pod that mounts an emptyDir at /tmp.
"""

from __future__ import annotations

import base64
import math
import re
from typing import Callable

Lookup = Callable[[str, str, str], "dict | None"]  # (kind, namespace, name) -> object or None

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


class NotReadyYet(Exception):
    """The pod cannot start yet (a referenced ConfigMap/Secret is missing); retried later."""


def image_repository(image: str) -> str:
    """`ghcr.io/org/dynasparse-worker:0.1@sha256:..` -> `dynasparse-worker`."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def runs_as_process(image: str) -> bool:
    """Our own images become local processes; any other image is only reported Running."""
    return "dynasparse" in image_repository(image).lower()


def container_argv(container: dict, python: str) -> list[str]:
    """The image's entrypoint is `dynasparse`, so args are the subcommand: `python -m dynasparse ARGS`.
    A command of `dynasparse ...` or `python ...` maps onto this interpreter; others run as given."""
    command = list(container.get("command") or [])
    args = list(container.get("args") or [])
    if not command:
        return [python, "-m", "dynasparse", *args]
    head = command[0].rsplit("/", 1)[-1]
    if head == "dynasparse":
        return [python, "-m", "dynasparse", *command[1:], *args]
    if head.startswith("python"):
        return [python, *command[1:], *args]
    return [*command, *args]


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known names are replaced, `$$` is a literal `$`."""
    def repl(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return _VAR.sub(repl, value)


def field_value(pod: dict, field_path: str, pod_ip: str, host_ip: str = "127.0.0.1") -> str:
    """The downward API's fieldRef values that a process kubelet can know."""
    meta, spec = pod.get("metadata", {}), pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name", ""), "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""), "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": pod_ip, "status.podIPs": pod_ip, "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if field_path in simple:
        return simple[field_path]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", field_path)
    if match:
        return meta.get(match.group(1), {}).get(match.group(2), "")
    if field_path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(field_path.split(".")[1], {})
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise NotReadyYet(f"fieldRef {field_path!r} is not supported by the process kubelet")


def resource_value(container: dict, resource: str, divisor: str | None = None) -> str:
    """A container's request/limit through the downward API, divided and rounded up as the
    kubelet does (`requests.cpu` of "500m" with divisor "1" is "1"); unset gives "0"."""
    kind, _, name = resource.partition(".")
    value = container.get("resources", {}).get(kind, {}).get(name)
    if value is None:
        return "0"
    if name != "cpu":
        return str(value)
    return str(math.ceil(_cpu_cores(str(value)) / _cpu_cores(str(divisor or "1")) - 1e-9))


def _cpu_cores(quantity: str) -> float:
    """A CPU quantity ("2", "500m", "0.5") in cores."""
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def config_data(obj: dict, kind: str) -> dict[str, str]:
    """Text values of a ConfigMap or Secret (Secret data is base64)."""
    if kind == "Secret":
        out = {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()}
        out.update(obj.get("stringData") or {})
        return out
    out = dict(obj.get("data") or {})
    out.update({k: base64.b64decode(v).decode(errors="replace")
                for k, v in (obj.get("binaryData") or {}).items()})
    return out


def _ref_value(ref: dict, kind: str, namespace: str, lookup: Lookup) -> str | None:
    obj = lookup(kind, namespace, ref.get("name", ""))
    optional = ref.get("optional", False)
    if obj is None:
        if optional:
            return None
        raise NotReadyYet(f"{kind} {namespace}/{ref.get('name')} not found")
    data = config_data(obj, kind)
    if ref["key"] not in data:
        if optional:
            return None
        raise NotReadyYet(f"key {ref['key']!r} not in {kind} {namespace}/{ref.get('name')}")
    return data[ref["key"]]


def container_env(pod: dict, container: dict, pod_ip: str, lookup: Lookup) -> dict[str, str]:
    """envFrom then env, in order, with $(VAR) expansion against what came before (as Kubernetes)."""
    namespace = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
            if key not in source:
                continue
            ref = source[key]
            obj = lookup(kind, namespace, ref.get("name", ""))
            if obj is None:
                if ref.get("optional"):
                    continue
                raise NotReadyYet(f"{kind} {namespace}/{ref.get('name')} not found")
            env.update({prefix + k: v for k, v in config_data(obj, kind).items()})
    for var in container.get("env") or []:
        name, source = var["name"], var.get("valueFrom")
        if source is None:
            env[name] = expand(var.get("value", ""), env)
        elif "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"], pod_ip)
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            env[name] = resource_value(container, ref["resource"], ref.get("divisor"))
        else:
            kind, ref = (("ConfigMap", source["configMapKeyRef"]) if "configMapKeyRef" in source
                         else ("Secret", source["secretKeyRef"]))
            value = _ref_value(ref, kind, namespace, lookup)
            if value is not None:
                env[name] = value
    return env


def mount_map(container: dict, volume_dirs: dict[str, str]) -> dict[str, str]:
    """mountPath -> local path, for each volumeMount whose volume was materialised."""
    out = {}
    for mount in container.get("volumeMounts") or []:
        local = volume_dirs.get(mount["name"])
        if local is None:
            continue
        sub = mount.get("subPath")
        out[mount["mountPath"].rstrip("/") or "/"] = f"{local}/{sub}" if sub else local
    return out


def rewrite_paths(value: str, mounts: dict[str, str]) -> str:
    """Replace each mount path (as a whole path-component prefix) by its local directory, in one
    pass, so a local directory that itself starts with another mount path (/tmp) is left alone."""
    paths = sorted((m for m in mounts if m != "/"), key=len, reverse=True)
    if not paths:
        return value
    pattern = rf"(?<![\w.\-/])({'|'.join(re.escape(m) for m in paths)})(?=$|/|[\s,:;=\"'])"
    return re.sub(pattern, lambda match: mounts[match.group(1)], value)


def rebind_wildcard(argv: list[str], pod_ip: str) -> list[str]:
    """Every pod shares the host's network namespace here, so a server told to listen on 0.0.0.0
    would collide with its siblings: bind it to the pod IP instead (as a pod's own netns would)."""
    out = []
    for arg in argv:
        if arg in ("0.0.0.0", "::", "[::]"):
            out.append(pod_ip)
        else:
            out.append(re.sub(r"(?<=[=/])(0\.0\.0\.0|\[::\])(?=:|$)", pod_ip, arg))
    return out


def process_spec(pod: dict, container: dict, pod_ip: str, python: str, lookup: Lookup,
                 volume_dirs: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """(argv, env overrides) of one container: everything a process start needs, fully resolved."""
    env = container_env(pod, container, pod_ip, lookup)
    argv = container_argv(container, python)
    host = argv[:1] if argv[0] == python else []  # the kubelet's interpreter, a host path
    mounts = mount_map(container, volume_dirs)
    argv = host + rebind_wildcard([rewrite_paths(expand(a, env), mounts) for a in argv[len(host):]],
                                  pod_ip)
    env = {k: rewrite_paths(v, mounts) for k, v in env.items()}
    return argv, env
