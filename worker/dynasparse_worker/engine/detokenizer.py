"""Incremental detokenization and stop strings, batched over every request that got tokens in a step.

Each request keeps a `TextState`; `Detokenizer.step(updates)` appends each request's new token ids
and turns them into text, then cuts at stop strings and holds back a tail that could still grow into
one. Two ways, checked against the tokenizer's own `decode` at start-up:
* byte-level BPE tokenizers (Llama 3, SmolLM2, GPT-2 style): a table from token id to its bytes and
  an incremental UTF-8 decoder per request, so a token costs a lookup, not a tokenizer call;
* any other tokenizer: two short windows per request (before and after the new tokens, so characters
  spanning several tokens come out whole), all decoded in ONE batch call for the step.
Pure host code, no torch.

Used by `Engine` when it detokenizes inline (tests, the demo, the benchmark) and by the server's
output stage (server/engine_loop.py), which runs it off the engine thread, once per step.
"""

from __future__ import annotations

import codecs
import json
import random
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
    utf8: Any = None  # incremental UTF-8 decoder (byte-table path)


@dataclass(frozen=True)
class Update:
    """New tokens of one request in one step; `finished`: the engine ended it (flush the tail)."""

    state: TextState
    token_ids: list[int]
    finished: bool


class Detokenizer:
    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast (Rust) tokenizer
        self._decode_batch = (
            (lambda windows: backend.decode_batch(windows, skip_special_tokens=True))
            if backend is not None and hasattr(backend, "decode_batch") else
            (lambda windows: tokenizer.batch_decode(windows, skip_special_tokens=True)))
        self._bytes = byte_table(tokenizer)  # token id -> bytes, or None

    def step(self, updates: list[Update]) -> list[str]:
        """The new text of each update, in order (stop strings cut, `state.stopped` set on a hit)."""
        if self._bytes is not None:
            table, size = self._bytes, len(self._bytes)
            for up in updates:
                state = up.state
                if state.stopped:
                    continue
                if state.utf8 is None:
                    state.utf8 = codecs.getincrementaldecoder("utf-8")("replace")
                raw = b"".join(table[t] for t in up.token_ids
                               if t not in state.skip_ids and 0 <= t < size)
                state.text += state.utf8.decode(raw, final=up.finished)
            return [_emit(up.state, up.finished) for up in updates]
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
        texts = self._decode_batch(windows) if windows else []
        for n, i in enumerate(decoding):
            state, before, after = updates[i].state, texts[2 * n], texts[2 * n + 1]
            if len(after) > len(before) and not after.endswith("\ufffd"):
                state.text += after[len(before):]
                state.prefix_offset, state.read_offset = state.read_offset, len(state.ids)
        return [_emit(up.state, up.finished) for up in updates]


def byte_table(tokenizer: Any, checks: int = 64) -> list[bytes] | None:
    """For a byte-level BPE tokenizer, the bytes of every token id (special ones empty: they are
    skipped), if decoding through the table gives what the tokenizer's own `decode` gives on
    random sequences; else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except Exception:  # noqa: BLE001 - not a fast tokenizer: use the window path
        return None
    if decoder.get("type") != "ByteLevel":
        return None
    to_byte = {ch: b for b, ch in _bytes_to_unicode().items()}
    added_tokens = backend.get_added_tokens_decoder()
    special = set(getattr(tokenizer, "all_special_ids", []))
    special |= {i for i, t in added_tokens.items() if t.special}
    added = {i: t.content for i, t in added_tokens.items()}
    size = backend.get_vocab_size(with_added_tokens=True)
    table = []
    for i in range(size):
        if i in special:
            table.append(b"")
        elif i in added:
            table.append(added[i].encode())
        else:
            token = backend.id_to_token(i) or ""
            if any(ch not in to_byte for ch in token):
                return None
            table.append(bytes(to_byte[ch] for ch in token))
    rng = random.Random(0)
    for _ in range(checks):
        ids = [rng.randrange(size) for _ in range(rng.randrange(1, 12))]
        mine = b"".join(table[i] for i in ids).decode("utf-8", "replace")
        if mine != tokenizer.decode(ids, skip_special_tokens=True):
            return None
    return table


def _bytes_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet: each byte as the printable character that stands for it."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


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
