"""Whether to start replacement pods while doomed pods drain: spec.control.replaceDisruptedPods.

Pure. Set in the spec, it is followed as given. Unset, replacing is on when the notice is longer
than it takes to bring up a worker pod: only then does a replacement started at the notice serve
before the node goes; with a shorter notice the survivors absorb the load and the Deployment
replaces the pods once they are deleted.

The notice's length comes from the operator's `signals.noticeLeadSeconds` (per notice key; a
notice without a known lead never turns replacing on). A model's load time is measured on its
own pods through the API server: from a pod's creation to its Ready condition, which covers
scheduling, image pull, the model load, calibration and warm-up alike; the slowest ready pod
counts, so a replacement is started only when even that one would have made it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Iterable, Mapping, Sequence

from dynasparse_operator.law_types import PodFacts
from dynasparse_operator.signals import pod_ready


@dataclasses.dataclass(frozen=True)
class Replacement:
    """The answer for one decision, and why (shown in the ReplacingCapacity event)."""

    on: bool
    reason: str


def _time(text: Any) -> dt.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def start_seconds(pod: Mapping[str, Any]) -> float | None:
    """Seconds from the pod's creation to its Ready condition; None unless it is ready now."""
    if not pod_ready(pod):
        return None
    created = _time((pod.get("metadata") or {}).get("creationTimestamp"))
    ready = next((_time(c.get("lastTransitionTime"))
                  for c in (pod.get("status") or {}).get("conditions") or ()
                  if c.get("type") == "Ready"), None)
    if created is None or ready is None or ready < created:
        return None
    return (ready - created).total_seconds()


def load_seconds(pods: Iterable[Mapping[str, Any]]) -> float | None:
    """The slowest measured start among the ready pods; None when none is ready."""
    times = [t for t in (start_seconds(p) for p in pods) if t is not None]
    return max(times) if times else None


def notice_seconds(draining: Sequence[PodFacts], leads: Mapping[str, float]) -> float | None:
    """The shortest known lead among the draining pods' notices; None when any has none."""
    found = []
    for pod in draining:
        known = [float(leads[key]) for key in pod.disruption if key in leads]
        if not known:
            return None
        found.append(min(known))
    return min(found) if found else None


def decide_replacement(asked: bool | None, draining: Sequence[PodFacts],
                       pods: Iterable[Mapping[str, Any]], leads: Mapping[str, float], *,
                       replacing: bool = False) -> Replacement:
    """`asked`: the spec's replaceDisruptedPods (None when unset); `replacing`: replacements are
    already up for pods still draining (they stay until those pods are gone, even if a slow
    replacement's own start now says otherwise: scaling back down would only churn pods)."""
    if asked is not None:
        return Replacement(asked, f"replaceDisruptedPods is {str(asked).lower()}")
    if not draining:
        return Replacement(False, "no pods draining")
    if replacing:
        return Replacement(True, "replacing until the draining pods are gone")
    notice = notice_seconds(draining, leads)
    if notice is None:
        keys = sorted({key for pod in draining for key in pod.disruption})
        return Replacement(False, f"the lead of {', '.join(keys)} is unknown (operator setting "
                                  "signals.noticeLeadSeconds): not replacing")
    load = load_seconds(pods)
    if load is None:
        return Replacement(False, f"notice {notice:.0f} s, but no ready pod to measure a start "
                                  "by: not replacing")
    if notice > load:
        return Replacement(True, f"notice {notice:.0f} s is longer than a pod's start "
                                 f"({load:.0f} s): replacing")
    return Replacement(False, f"notice {notice:.0f} s is no longer than a pod's start "
                              f"({load:.0f} s): the survivors absorb the load")
