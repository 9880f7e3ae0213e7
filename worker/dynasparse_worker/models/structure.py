"""Find the decoder blocks and their q/k/v/o/gate/up/down projections of any HF decoder model, structurally.

No family is hard-coded: the decoder stack is the longest `nn.ModuleList` whose every element parses
as a block; inside a block, the attention child is the one with >= 4 linear projections (its output
projection picked by name — `o_proj`, `out_proj`, `dense`, `wo` — else the last registered), the MLP
child is the one with 3 projections, one of which maps the intermediate width back to `hidden`.
Works for Llama, Mistral, Qwen2/Qwen3, SmolLM, Gemma 2/3 (checked by tests on tiny random configs).
Called by `gating.install` and `gating.calibrate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from dynasparse_worker.errors import UserError

_OUT_NAMES = ("o_proj", "out_proj", "dense", "wo", "o")
_QUERY_NAMES = ("q_proj", "wq", "query", "q")
_DOWN_NAMES = ("down_proj", "w2", "fc2", "down")


@dataclass
class Projection:
    """One linear projection and where it hangs, so it can be replaced by a gated module."""

    name: str  # attribute name inside its parent, e.g. "q_proj"
    parent: nn.Module
    module: nn.Module  # nn.Linear or GatedLinear (anything with a 2-D `weight`)

    @property
    def in_features(self) -> int:
        return int(self.module.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.module.weight.shape[0])


@dataclass
class BlockProjections:
    """The four input groups of one decoder block (`sparsity.GROUP_NAMES`)."""

    groups: list[list[Projection]] = field(default_factory=list)  # [4][members]

    def row_bytes(self, group: int) -> int:
        """Weight elements read per kept input channel of `group` (sum of its members' out widths)."""
        return sum(p.out_features for p in self.groups[group])

    def in_features(self, group: int) -> int:
        return self.groups[group][0].in_features

    def cache_elements(self) -> int:
        """Weight elements of the key/value projections: they still run when the attention half is
        skipped, so later tokens find this layer's KV entries (every attention-input member but the
        query, picked by name, else the first one)."""
        query = _pick(self.groups[0], _QUERY_NAMES, self.groups[0][0])
        return sum(p.in_features * p.out_features for p in self.groups[0] if p is not query)

    def skip_elements(self) -> tuple[int, int]:
        """Weight elements a skipped (attention, MLP) half does not read: the query and output
        projections; the whole MLP."""
        attention = self.in_features(0) * self.row_bytes(0) - self.cache_elements()
        attention += self.in_features(1) * self.row_bytes(1)
        return attention, self.in_features(2) * self.row_bytes(2) + self.in_features(3) * self.row_bytes(3)


@dataclass
class ModelStructure:
    hidden: int
    blocks: list[BlockProjections]
    layers: list[nn.Module] = field(default_factory=list)  # the decoder block modules, same order

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def group_elements(self) -> list[list[int]]:
        """Weight elements per (layer, group): in_features × row_bytes; sums to the decode bytes."""
        return [[b.in_features(g) * b.row_bytes(g) for g in range(4)] for b in self.blocks]

    def skip_elements(self) -> list[tuple[int, int]]:
        """Weight elements per (layer, half) that skipping the half saves (see BlockProjections)."""
        return [b.skip_elements() for b in self.blocks]


def _is_projection(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (isinstance(module, nn.Linear) or getattr(module, "is_gated_linear", False)) and (
        weight is not None and weight.dim() == 2
    )


def _projections(child: nn.Module) -> list[Projection]:
    found = []
    for parent in child.modules():
        for name, sub in parent.named_children():
            if _is_projection(sub):
                found.append(Projection(name, parent, sub))
    return found


def _pick(projs: list[Projection], names: tuple[str, ...], fallback: Projection) -> Projection:
    for wanted in names:
        for proj in projs:
            if proj.name == wanted:
                return proj
    return fallback


def _parse_block(block: nn.Module, hidden: int) -> BlockProjections | None:
    attention = mlp = None
    for _, child in block.named_children():
        projs = _projections(child)
        if len(projs) == 3:
            down = _pick(projs, _DOWN_NAMES, next((p for p in projs if p.in_features != hidden), projs[-1]))
            ins = [p for p in projs if p is not down]
            if down.out_features == hidden and all(
                p.in_features == hidden and p.out_features == down.in_features for p in ins
            ):
                mlp = (ins, down)
        elif len(projs) >= 4:
            out = _pick(projs, _OUT_NAMES, projs[-1])
            ins = [p for p in projs if p is not out]
            if out.out_features == hidden and all(p.in_features == hidden for p in ins):
                attention = (ins, out)
    if attention is None or mlp is None:
        return None
    return BlockProjections([attention[0], [attention[1]], mlp[0], [mlp[1]]])


def hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    size = getattr(config, "hidden_size", None)
    if size is None:
        embeddings = model.get_input_embeddings()
        size = embeddings.weight.shape[1]
    return int(size)


def find_structure(model: nn.Module) -> ModelStructure:
    """Locate the decoder blocks; UserError if the model has no recognisable gated-MLP decoder stack."""
    hidden = hidden_size(model)
    best: list[BlockProjections] = []
    layers: list[nn.Module] = []
    for _, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) <= len(best):
            continue
        parsed = [_parse_block(block, hidden) for block in module]
        if all(p is not None for p in parsed):
            best, layers = parsed, list(module)  # type: ignore[assignment]
    if not best:
        raise UserError(
            f"{type(model).__name__} has no decoder blocks with q/k/v/o and gate/up/down projections: "
            "pass a decoder-only model with gated MLPs (Llama, Mistral, Qwen, Gemma, SmolLM)"
        )
    return ModelStructure(hidden, best, layers)
