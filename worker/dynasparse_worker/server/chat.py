"""Chat messages → prompt token ids, through the tokenizer's own chat template.

Called by server/app.py for `POST /v1/chat/completions`. A tokenizer without a template gets a plain
"role: content" transcript ending in "assistant:", so base models still answer.
"""

from __future__ import annotations

from typing import Any

from dynasparse_worker.server.openai_schema import ChatMessage


def chat_prompt_ids(tokenizer: Any, messages: list[ChatMessage]) -> list[int]:
    turns = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
             for m in messages]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    else:
        text = "".join(f"{t['role']}: {t['content']}\n" for t in turns) + "assistant:"
    return list(tokenizer.encode(text, add_special_tokens=False))


def completion_prompt_ids(tokenizer: Any, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, list):
        return [int(t) for t in prompt]
    return list(tokenizer.encode(prompt, add_special_tokens=True))
