"""The decoder blocks and their projections are found structurally, across architecture families."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dynasparse_worker.errors import UserError
from dynasparse_worker.models.structure import find_structure

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_exposes_qkv_o_gate_up_down_in_four_groups(family, make_tiny):
    model = make_tiny(family)
    structure = find_structure(model)
    assert structure.num_layers == 3
    for block in structure.blocks:
        names = [[p.name for p in group] for group in block.groups]
        assert sorted(names[0]) == ["k_proj", "q_proj", "v_proj"]
        assert names[1] == ["o_proj"]
        assert sorted(names[2]) == ["gate_proj", "up_proj"]
        assert names[3] == ["down_proj"]
        assert block.in_features(3) == 64 and block.in_features(2) == 32


def test_model_without_gated_mlp_blocks_is_refused_with_a_user_error():
    class NotADecoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 8)
            self.layers = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])

        def get_input_embeddings(self):
            return self.embed

    with pytest.raises(UserError, match="decoder"):
        find_structure(NotADecoder())


def test_group_elements_sum_to_the_blocks_projection_weights(make_tiny):
    model = make_tiny("llama")
    structure = find_structure(model)
    expected = sum(m.weight.numel() for name, m in model.named_modules()
                   if isinstance(m, nn.Linear) and "lm_head" not in name)
    assert sum(map(sum, structure.group_elements())) == expected
    assert torch.is_tensor(next(model.parameters()))


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_a_skipped_attention_half_saves_its_query_and_output_bytes_not_its_keys_and_values(family, make_tiny):
    model = make_tiny(family)
    structure = find_structure(model)
    attention = model.model.layers[0].self_attn
    mlp = model.model.layers[0].mlp
    size = lambda *mods: sum(m.weight.numel() for m in mods)  # noqa: E731
    assert structure.blocks[0].cache_elements() == size(attention.k_proj, attention.v_proj)
    assert structure.skip_elements()[0] == (size(attention.q_proj, attention.o_proj),
                                            size(mlp.gate_proj, mlp.up_proj, mlp.down_proj))
