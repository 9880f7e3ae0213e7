"""The API key of one AdaptiveModel's workers: the Secret the operator makes, and where it is shown.

Pure apart from drawing the key. By default (`spec.auth.mode: APIKey` without `apiKeySecret`)
the operator creates Secret `<name>-api-key` once, with a random 32-byte key (URL-safe base64),
owned by the AdaptiveModel; it never overwrites it, so a key the user rotates by editing the Secret
stays (the workers re-read the mounted file). A user's own Secret is only mounted, never read: the
operator needs no access to it. The status says where the key lives, with the command that prints it.
"""

from __future__ import annotations

import secrets
from typing import Any

from dynasparse_operator import manifests
from dynasparse_operator.spec import AUTH_API_KEY, AdaptiveModelSpec

KEY_BYTES = 32


def new_key() -> str:
    return secrets.token_urlsafe(KEY_BYTES)


def operator_made(spec: AdaptiveModelSpec) -> bool:
    """True when the operator owns the key's Secret (API key on, no Secret named by the user)."""
    return spec.auth.mode == AUTH_API_KEY and not spec.auth.secret_name


def secret(owner: manifests.Owner, spec: AdaptiveModelSpec, key: str) -> dict[str, Any]:
    """The operator-made key Secret (create only: an existing one is kept as it is)."""
    meta = manifests.owned_metadata(manifests.api_key_secret_name(owner.name, spec), owner,
                               {"app.kubernetes.io/component": "api-key"})
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta,
            "stringData": {spec.auth.secret_key: key}}


def status(owner: manifests.Owner, spec: AdaptiveModelSpec) -> dict[str, Any]:
    """`status.auth`: the mode and, with a key, its Secret and the command that prints it."""
    if spec.auth.mode != AUTH_API_KEY:
        return {"mode": spec.auth.mode, "secretName": None, "secretKey": None, "hint": None}
    name = manifests.api_key_secret_name(owner.name, spec)
    key = spec.auth.secret_key
    jsonpath = "{.data." + key.replace(".", "\\.") + "}"
    return {"mode": spec.auth.mode, "secretName": name, "secretKey": key,
            "hint": f"kubectl get secret {name} -n {owner.namespace} -o jsonpath='{jsonpath}' "
                    "| base64 -d  (send it as 'Authorization: Bearer <key>')"}
