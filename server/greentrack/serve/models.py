"""The HTTP API's request and response bodies (pydantic), and how a request becomes a ``CompletionRequest``.

Place in the flow: the app validates bodies with these models (a wrong type or an out-of-range value is a 422
that names the field); ``to_engine_request`` turns either kind of request into the engine's
``CompletionRequest``, so prompt building, FIM, token healing, stop rules and KV reuse are the in-process ones.
An OpenAI ``prompt``/``suffix`` pair becomes the document ``prompt + suffix`` with the cursor between them:
the engine's prompt builder then makes a FIM prompt when the model has FIM tokens, a prefix-only one otherwise.
Field names: ``docs/interfaces.md`` ("HTTP API").
"""

from __future__ import annotations

import re
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from greentrack.engine.types import EngineResult
from greentrack.errors import BadInput
from greentrack.record import CompletionRecord

#: The most tokens one request may ask for.
MAX_TOKENS_LIMIT = 1024
#: A completion id a client may choose (to cancel it before the answer comes).
COMPLETION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{7,63}$"
_COMPLETION_ID = re.compile(COMPLETION_ID_PATTERN)


class OpenAICompletionBody(BaseModel):
    """``POST /v1/completions`` (OpenAI's legacy completions API). Unknown fields are ignored, as OpenAI's
    servers ignore fields they do not use; sampling fields are accepted but decoding is greedy."""

    model_config = ConfigDict(extra="ignore")

    model: str
    prompt: str | list[str]
    suffix: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)
    echo: bool = False
    logprobs: int | None = Field(default=None, le=0)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("one prompt per request (a list of exactly one string)")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("at most 4 non-empty stop strings")
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported")
        return value

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    @property
    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class Position(BaseModel):
    """A cursor as LSP gives it: 0-based line, and character in ``position_encoding`` units."""

    model_config = ConfigDict(extra="forbid")

    line: int = Field(ge=0)
    character: int = Field(ge=0)


class NativeCompleteBody(BaseModel):
    """``POST /v1/greentrack/complete``: a document and its cursor, completed as in-process."""

    model_config = ConfigDict(extra="forbid")

    text: str
    offset: int | None = Field(default=None, ge=0, description="cursor as a code-point index into text")
    position: Position | None = None
    position_encoding: Literal["utf-16", "utf-32"] = "utf-16"
    language_id: str = Field(default="plaintext", max_length=64)
    uri: str | None = Field(default=None, max_length=4096)
    document_key: str | None = Field(default=None, max_length=4096)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    completion_id: str | None = Field(default=None, pattern=COMPLETION_ID_PATTERN)

    @model_validator(mode="after")
    def _one_cursor(self) -> NativeCompleteBody:
        if (self.offset is None) == (self.position is None):
            raise ValueError("give the cursor as exactly one of offset or position {line, character}")
        return self

    def cursor_offset(self) -> int:
        """The cursor as a code-point index into ``text``; ``BadInput`` when outside the document."""
        if self.offset is not None:
            if self.offset > len(self.text):
                raise BadInput(f"offset {self.offset} is past the end of the text ({len(self.text)} characters)")
            return self.offset
        assert self.position is not None
        return offset_at(self.text, self.position.line, self.position.character, self.position_encoding)


def offset_at(text: str, line: int, character: int, encoding: str = "utf-16") -> int:
    """LSP position → code-point offset. ``BadInput`` past the end of the document or of the line."""
    lines = text.split("\n")
    if line >= len(lines):
        raise BadInput(f"line {line} is past the end of the text ({len(lines)} lines, 0-based)")
    content = lines[line]
    if encoding == "utf-16":
        units = content.encode("utf-16-le")
        if character * 2 > len(units):
            raise BadInput(f"character {character} is past the end of line {line} ({len(units) // 2} UTF-16 units)")
        column = len(units[: character * 2].decode("utf-16-le", errors="ignore"))
    else:
        if character > len(content):
            raise BadInput(f"character {character} is past the end of line {line} ({len(content)} characters)")
        column = character
    return sum(len(x) + 1 for x in lines[:line]) + column


class CompletionIdBody(BaseModel):
    """``POST /v1/greentrack/accept`` and ``/cancel``."""

    model_config = ConfigDict(extra="forbid")

    completion_id: str = Field(min_length=1, max_length=128)


def valid_completion_id(value: str) -> bool:
    return bool(_COMPLETION_ID.match(value))


# ------------------------------------------------------------------------------------------------ responses


def finish_reason(result: EngineResult | None) -> str:
    """OpenAI's ``finish_reason``: ``length`` when the token budget ended it, else ``stop``."""
    return "length" if result is not None and result.stop_reason == "max_tokens" else "stop"


def cut_at_stops(text: str, stops: list[str]) -> tuple[str, bool]:
    """``text`` up to the first of the client's stop strings (OpenAI's ``stop``); whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def greentrack_object(
    completion_id: str,
    result: EngineResult | None,
    *,
    queue_ms: float,
    latency_ms: float,
    record: CompletionRecord | None,
    energy_url: str | None,
    timings_ms: dict[str, float | None] | None = None,
) -> dict[str, Any]:
    """The ``greentrack`` object of a completion response: tokens, times, and the energy fields once known
    (``null`` until the record is attributed: ``energy_url`` long-polls for them)."""
    prefill = result.span("prefill") if result is not None else None
    decode = result.span("decode") if result is not None else None
    out: dict[str, Any] = {
        "completion_id": completion_id,
        "prompt_tokens": result.prompt_tokens if result is not None else 0,
        "reused_prompt_tokens": result.reused_prompt_tokens if result is not None else 0,
        "completion_tokens": result.completion_tokens if result is not None else 0,
        "queue_ms": round(queue_ms, 3),
        "prefill_ms": round(prefill.duration_s * 1000.0, 3) if prefill else 0.0,
        "decode_ms": round(decode.duration_s * 1000.0, 3) if decode else 0.0,
        "latency_ms": round(latency_ms, 3),
        "server_timings_ms": timings_ms or {},
        "stop_reason": (result.stop_reason or None) if result is not None else "cancelled",
        # a cache hit's outcome is known before its record is stored
        "outcome": record.outcome if record is not None else (
            "cached" if result is not None and result.from_cache else None),
        "energy_final": record is not None,
        "energy_url": energy_url,
    }
    fields = record.energy_fields() if record is not None else {}
    for name in ("prefill_j", "decode_j", "total_j", "method", "meter", "uncertainty_j", "co2e_g"):
        out[name] = fields.get(name)
    return out


def openai_completion(
    completion_id: str, model: str, text: str, finish: str, result: EngineResult | None, green: dict[str, Any]
) -> dict[str, Any]:
    """A whole ``text_completion`` response (non-streaming)."""
    prompt_tokens = result.prompt_tokens if result is not None else 0
    completion_tokens = result.completion_tokens if result is not None else 0
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
        "greentrack": green,
    }


def openai_chunk(
    completion_id: str, model: str, created: int, text: str, finish: str | None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One streamed ``text_completion`` chunk (OpenAI's format: the same ``id`` in every chunk)."""
    chunk: dict[str, Any] = {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
    }
    if extra:
        chunk.update(extra)
    return chunk


#: The per-completion engine-step figures (schema v6) the record carries besides the ``greentrack/energy`` fields:
#: null where the completion was not attributed by engine step (the transformers backend, a cached suggestion).
STEP_FIELDS: tuple[str, ...] = ("steps", "batched_steps", "mean_batch_size")


def record_view(row: dict[str, Any]) -> dict[str, Any]:
    """A stored completion (a record's fields or a store row) as ``GET /v1/greentrack/completions/{id}``
    returns it: the ``greentrack/energy`` fields plus the engine-step figures, ``ts``, ``developer`` and
    acceptance. A remote editor mirrors it into its own database (``remote.record_from_view``)."""
    from greentrack.record import ENERGY_FIELDS

    out = {name: row.get(name) for name in (*ENERGY_FIELDS, *STEP_FIELDS)}
    out.update(
        ts=row.get("ts"), developer=row.get("developer"), accepted=bool(row.get("accepted")),
        accepted_ts=row.get("accepted_ts"), energy_final=True,
    )
    for extra in ("today_j", "today_completions"):
        if row.get(extra) is not None:
            out[extra] = row[extra]
    return out
