"""The reference the engine tests compare with: greedy decoding through the HF model's own forward.

Imported by test_engine_outputs.py and test_sparse_engine.py (pytest puts this folder on sys.path).
"""

from __future__ import annotations

import torch


@torch.inference_mode()
def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    """`n` greedy tokens through the (possibly gated) HF model's forward and KV cache; EOS is not
    suppressed (HF `generate(min_new_tokens=...)` would change the tokens it is compared with)."""
    ids, past, out = torch.tensor([prompt]), None, []
    for _ in range(n):
        res = model(input_ids=ids, past_key_values=past, use_cache=True)
        past = res.past_key_values
        out.append(int(res.logits[0, -1].argmax()))
        ids = torch.tensor([[out[-1]]])
    return out
