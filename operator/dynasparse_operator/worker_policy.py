"""What an AdaptiveModel may ask of its worker pods: image, priority class, extra arguments.

Whoever may create an AdaptiveModel must not thereby run any image, pre-empt other workloads or
rewire the worker (its address, ports, TLS or API key). The cluster admin lists what is allowed in
the operator's settings (chart values `config.worker.allowedImages`, `allowedPriorityClasses`,
`allowedExtraArgs`); `violations()` is pure and says, for each request outside them, what to do.
handlers.py refuses such a spec: no Deployment is created or changed, the status and a Warning
event carry the messages.
"""

from __future__ import annotations

import fnmatch

from dynasparse_operator.settings import WorkerSettings
from dynasparse_operator.spec import AdaptiveModelSpec


def _repository(image: str) -> str:
    """`host:5000/org/name:tag@sha256:..` -> `host:5000/org/name` (a registry port is no tag)."""
    name = image.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def image_allowed(image: str, settings: WorkerSettings) -> bool:
    """The default image's repository is always allowed; patterns without a tag or digest match
    every tag and digest of that repository; `*` matches any characters (`/` included)."""
    patterns = [*settings.allowed_images, _repository(settings.image)]
    for pattern in patterns:
        if "*" in pattern or ":" in pattern.rsplit("/", 1)[-1] or "@" in pattern:
            if fnmatch.fnmatchcase(image, pattern):
                return True
        elif _repository(image) == pattern:
            return True
    return False


def flag_name(arg: str) -> str:
    return arg.split("=", 1)[0]


def violations(spec: AdaptiveModelSpec, settings: WorkerSettings) -> list[str]:
    """One message per request the settings do not allow; empty when the spec may run."""
    out = []
    image = spec.worker.image
    if image and not image_allowed(image, settings):
        allowed = ", ".join([*settings.allowed_images, _repository(settings.image)])
        out.append(f"image {image!r} is not allowed (allowed: {allowed}); use one of those or ask "
                   "the cluster admin to add it to the chart's config.worker.allowedImages")
    pc = spec.scheduling.priority_class_name
    if pc and pc not in settings.allowed_priority_classes:
        allowed = ", ".join(settings.allowed_priority_classes) or "none"
        out.append(f"priorityClassName {pc!r} is not allowed (allowed: {allowed}); drop it or ask "
                   "the cluster admin to add it to config.worker.allowedPriorityClasses")
    previous_is_flag = False
    for arg in spec.worker.extra_args:
        if arg.startswith("-"):
            if flag_name(arg) not in settings.allowed_extra_args:
                out.append(f"worker.extraArgs {flag_name(arg)!r} is not allowed (allowed: "
                           f"{', '.join(settings.allowed_extra_args) or 'none'}); the operator sets "
                           "address, ports, TLS and the API key itself")
            previous_is_flag = "=" not in arg
        elif previous_is_flag:
            previous_is_flag = False  # the value of the flag before it
        else:
            out.append(f"worker.extraArgs {arg!r} is not a flag's value; write flags as "
                       "'--flag value' or '--flag=value'")
    return out
