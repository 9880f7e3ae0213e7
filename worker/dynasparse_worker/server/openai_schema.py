"""Pydantic models of the OpenAI-compatible requests, and the OpenAI-style error body.

server/app.py validates request JSON with these; a `ValidationError` becomes a 400 whose `param`
names the first offending field. Unknown fields are ignored (clients send many); fields we cannot
honour (n > 1, echo, logprobs, penalties) are refused by name rather than silently dropped. Every
number has explicit finite bounds, so nothing a client sends can overflow the engine's int64 sampling
tensors (which would fail the whole batch's step, not just this request).
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dynasparse_worker.engine.types import SamplingParams

# Seeds: OpenAI clients send signed int64, others unsigned 64-bit; both are accepted and folded into
# the non-negative int64 range the sampler's tensors hold. The sampler hashes only the low 32 bits,
# which the fold keeps, so every accepted seed samples exactly as it would unfolded.
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
_INT63_MASK = 2**63 - 1
TOP_K_MAX = 2**31 - 1  # any top_k at or above the vocabulary size means "no cut"
MAX_TOKENS_MAX = 2**31 - 1  # the context decides the real limit; this keeps the number an int32
MAX_STOP_CHARS = 256


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_MAX)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, le=TOP_K_MAX)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    ignore_eos: bool = False
    presence_penalty: float = Field(default=0.0, ge=0.0, le=0.0)
    frequency_penalty: float = Field(default=0.0, ge=0.0, le=0.0)
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4 or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"up to 4 non-empty stop strings of at most {MAX_STOP_CHARS} "
                             "characters each")
        return stops

    def sampling(self, max_tokens: int) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p,
            top_k=self.top_k, seed=None if self.seed is None else self.seed & _INT63_MASK,
            stop_strings=tuple(self.stop or ()),
            ignore_eos=self.ignore_eos,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Common):
    prompt: Union[str, list[str], list[int]]
    max_tokens: int | None = Field(default=16, ge=1, le=MAX_TOKENS_MAX)
    echo: Literal[False] = False
    logprobs: None = None
    suffix: None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: Any) -> Any:
        if isinstance(v, list) and v and isinstance(v[0], str):
            if len(v) != 1:
                raise ValueError("one prompt per request is supported")
            return v[0]
        if isinstance(v, list) and not v:
            raise ValueError("must not be empty")
        return v


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_MAX)
    logprobs: Literal[False] | None = None

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def error_body(message: str, param: str | None = None, type_: str = "invalid_request_error",
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def first_error(exc: ValidationError) -> tuple[str, str]:
    """(param, message) of the first validation error, param as a dotted path like `messages.0.role`."""
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if not _is_union_tag(p)]
    param = ".".join(loc) or "body"
    return param, f"{param}: {err.get('msg', 'invalid value')}"


def _is_union_tag(part: Any) -> bool:
    """Pydantic puts the union member's type name in the location (`str`, `list[int]`): drop it."""
    return isinstance(part, str) and (part in {"str", "int", "list[str]", "list[int]", "none"}
                                      or part.startswith(("list[", "function-")))
