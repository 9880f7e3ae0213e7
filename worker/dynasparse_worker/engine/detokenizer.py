"""Incremental detokenization and stop strings, batched over every request that got tokens in a step.

Each request keeps a `TextState`; `Detokenizer.step(updates)` appends each request's new token ids,
decodes two short windows per request (before and after the new tokens, so characters spanning
several tokens come out whole) in ONE `tokenizer.batch_decode` call — a fast tokenizer does the
whole batch in native code without the GIL — then cuts at stop strings and holds back a tail that
could still grow into one. Pure host code, no torch.

Used by `Engine` when it detokenizes inline (tests, the demo, the benchmark) and by the server's
output stage (server/engine_loop.py), which runs it off the engine thread, once per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TextState:
    """One request's detokenization progress."""

    stops: tuple[str, ...] = ()  # stop strings
    skip_ids: frozenset[int] = frozenset()  # stop token ids: they end the request, print nothing
    ids: list[int] = field(default_factory=list)
    prefix_offset: int = 0
    read_offset: int = 0
    text: str = ""
    emitted_chars: int = 0
    stopped: bool = False  # a stop string was found: the text is final


@dataclass(frozen=True)
class Update:
    """New tokens of one request in one step; `finished`: the engine ended it (flush the tail)."""

    state: TextState
    token_ids: list[int]
    finished: bool


class Detokenizer:
    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def step(self, updates: list[Update]) -> list[str]:
        """The new text of each update, in order (stop strings cut, `state.stopped` set on a hit)."""
        windows: list[list[int]] = []
        decoding: list[int] = []
        for i, up in enumerate(updates):
            state = up.state
            fresh = [t for t in up.token_ids if t not in state.skip_ids]
            if fresh and not state.stopped:
                state.ids.extend(fresh)
                windows.append(state.ids[state.prefix_offset:state.read_offset])
                windows.append(state.ids[state.prefix_offset:])
                decoding.append(i)
        texts = self.tokenizer.batch_decode(windows, skip_special_tokens=True) if windows else []
        for n, i in enumerate(decoding):
            state, before, after = updates[i].state, texts[2 * n], texts[2 * n + 1]
            if len(after) > len(before) and not after.endswith("\ufffd"):
                state.text += after[len(before):]
                state.prefix_offset, state.read_offset = state.read_offset, len(state.ids)
        return [_emit(up.state, up.finished) for up in updates]


def _emit(state: TextState, finished: bool) -> str:
    """Cut at the first stop string; return the text that is now safe to send."""
    stops = state.stops
    if stops and not state.stopped:
        window = max(0, state.emitted_chars - max(len(s) for s in stops))
        hits = [i for i in (state.text.find(s, window) for s in stops) if i >= 0]
        if hits:
            state.text = state.text[:min(hits)]
            state.stopped = True
    final = finished or state.stopped
    upto = len(state.text) if final or not stops else len(state.text) - held_back(state.text, stops)
    upto = max(upto, state.emitted_chars)
    text = state.text[state.emitted_chars:upto]
    state.emitted_chars = upto
    return text


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of `text` that could still grow into a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-n:]):
                longest = n
                break
    return longest
