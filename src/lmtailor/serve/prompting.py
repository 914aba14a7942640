"""Requests to token ids: chat messages and text prompts, the tokens that end an answer, the context check, and the
JSON-schema enum constraint.

Prompts go through the same functions as the rest of lmtailor (``prompting/formats.py``: the chat template, or the plain
template when a tokenizer has none; ``prompting/seq2seq_format.py`` for encoder-decoder models), so a served model sees
its prompts laid out as it saw them in training and evaluation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from lmtailor.core.task_spec import TaskSpec
from lmtailor.errors import UserError
from lmtailor.inference.generation import LabelTrie
from lmtailor.prompting.formats import encode_prompt, stop_token_ids, tokenize_text
from lmtailor.prompting.seq2seq_format import encode_source, encode_target, source_text
from lmtailor.serve.protocol import APIError, Message, message_text
from lmtailor.serve.target import ServedModel

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class Constraint:
    """Decoding limited to a fixed set of answers (the JSON texts of a schema's enum values)."""

    key: tuple  # requests with equal keys share a batch (one trie per batch)
    trie: LabelTrie
    longest: int  # tokens of the longest answer, stop token included


def _chat_turns(messages: Sequence[Message]) -> list[dict[str, str]]:
    turns = []
    for i, message in enumerate(messages):
        role = _ROLES.get(message.role)
        if role is None:
            supported = "not supported (no tool calls)" if message.role in ("tool", "function") else "unknown"
            raise APIError(400, f"'messages.{i}.role' {message.role!r} is {supported}; use system, developer, user "
                                "or assistant", f"messages.{i}.role", "invalid_value")
        turns.append({"role": role, "content": message_text(message, i)})
    return turns


def _seq2seq_source(turns: list[dict[str, str]]) -> str:
    """Flan-style source text: system text first, earlier turns as Input/Answer pairs, then the last user turn."""
    system = "\n\n".join(t["content"] for t in turns if t["role"] == "system")
    dialogue = [t for t in turns if t["role"] != "system"]
    alternating = all(t["role"] == ("user" if i % 2 == 0 else "assistant") for i, t in enumerate(dialogue))
    if not dialogue or not alternating or dialogue[-1]["role"] != "user":
        raise APIError(400, "an encoder-decoder model takes alternating user/assistant messages that start and end "
                            "with a user message (system messages anywhere)", "messages", "invalid_value")
    meta = {"system": system or None, "history": dialogue[:-1]}
    return source_text(TaskSpec("serve", "generation", ""), dialogue[-1]["content"], meta=meta)


def chat_prompt_ids(served: ServedModel, messages: Sequence[Message]) -> list[int]:
    """Token ids of a chat request: the chat template (decoder-only) or the family's source text."""
    turns = _chat_turns(messages)
    with served.encode_lock:
        try:
            if served.seq2seq:
                return encode_source(served.tokenizer, _seq2seq_source(turns))
            return encode_prompt(served.tokenizer, turns)
        except UserError as e:  # e.g. a chat template that refuses a system turn
            raise APIError(400, str(e), "messages", "invalid_value") from None


def completion_prompt_ids(served: ServedModel, prompt: str | list[str]) -> list[int]:
    """Token ids of a text-completion prompt (BOS first when the model expects it; the encoder's own specials)."""
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise APIError(400, "'prompt' must be one string (a list of several prompts is not supported; send one "
                                "request per prompt)", "prompt", "unsupported_value")
        prompt = prompt[0]
    with served.encode_lock:
        ids = encode_source(served.tokenizer, prompt) if served.seq2seq else tokenize_text(served.tokenizer, prompt)
    if not ids:  # an empty prompt for a model without a BOS token: nothing to continue from
        raise APIError(400, "'prompt' is empty: this model adds no start token, so there is nothing to continue; "
                            "send some text", "prompt", "invalid_value")
    return ids


def stop_ids(served: ServedModel, chat: bool) -> tuple[int, ...]:
    """Tokens that end an answer: the chat template's end-of-turn and eos for chat; eos for a raw completion."""
    eos = served.tokenizer.eos_token_id
    if served.seq2seq or (not chat and eos is not None):
        if eos is None:
            raise UserError("this encoder-decoder tokenizer has no eos token: answers would have no end")
        return (eos,)
    with served.encode_lock:
        return tuple(stop_token_ids(served.tokenizer))


def answer_budget(served: ServedModel, prompt_tokens: int, max_tokens: int | None, limit: int,
                  param: str = "messages") -> int:
    """The answer's token budget: ``max_tokens`` (default: what the context and the limit leave), checked against
    the context (decoder: prompt + virtual tokens + answer; encoder-decoder: the source and the answer each)."""
    context = served.context_length
    if context is None:
        return max_tokens if max_tokens is not None else limit
    if served.seq2seq:
        if prompt_tokens > context:
            raise _too_long(f"the prompt is {prompt_tokens} tokens, over the model's context of {context}", param)
        return min(max_tokens, context) if max_tokens is not None else min(limit, context)
    used = prompt_tokens + served.virtual_tokens
    room = context - used
    wanted = max_tokens if max_tokens is not None else min(limit, room)
    if wanted < 1 or used + wanted > context:
        virtual = f" + {served.virtual_tokens} virtual" if served.virtual_tokens else ""
        raise _too_long(f"the prompt ({prompt_tokens} tokens{virtual}) plus max_tokens ({wanted}) is "
                        f"{used + wanted} tokens, over the model's context of {context}; shorten the prompt or "
                        "lower max_tokens", param)
    return wanted


def _too_long(message: str, param: str) -> APIError:
    return APIError(400, message, param, "context_length_exceeded")


def _enum_schema(response_format: dict[str, Any]) -> tuple[str, list[str]]:
    """(property, enum values) of the one schema shape served: an object with one required string enum property."""
    shape = ("supported: {'type': 'json_schema', 'json_schema': {'name': ..., 'schema': {'type': 'object', "
             "'properties': {KEY: {'type': 'string', 'enum': [...]}}, 'required': [KEY]}}}, i.e. an object with "
             "exactly one required string property restricted by an enum")
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise APIError(400, f"this response_format json_schema is not supported; {shape}", "response_format",
                       "unsupported_value")
    properties = schema.get("properties")
    if not isinstance(properties, dict) or len(properties) != 1:
        raise APIError(400, f"json_schema with {len(properties or {})} properties is not supported; {shape}",
                       "response_format", "unsupported_value")
    (key, prop), = properties.items()
    enum = prop.get("enum") if isinstance(prop, dict) else None
    if (schema.get("required") != [key] or not isinstance(prop, dict) or prop.get("type", "string") != "string"
            or not isinstance(enum, list) or not enum or not all(isinstance(v, str) for v in enum)
            or len(set(enum)) != len(enum)):
        raise APIError(400, f"json_schema property {key!r} is not a required string with an enum of distinct "
                            f"strings; {shape}", "response_format", "unsupported_value")
    return key, enum


def response_constraint(served: ServedModel, response_format: dict[str, Any] | None, chat_stops: Sequence[int]
                        ) -> Constraint | None:
    """The decoding constraint a ``response_format`` asks for (None for free text)."""
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        raise APIError(400, "response_format json_object is not supported (free-form JSON is not enforced); use "
                            "json_schema with one required string enum property", "response_format",
                       "unsupported_value")
    if kind != "json_schema":
        raise APIError(400, f"unknown response_format type {kind!r}; use text or json_schema", "response_format",
                       "invalid_value")
    key, enum = _enum_schema(response_format)
    texts = [json.dumps({key: value}, ensure_ascii=False) for value in enum]
    tok = served.tokenizer
    with served.encode_lock:
        if served.seq2seq:
            start = served.model.config.decoder_start_token_id
            sequences = [encode_target(tok, text, start) for text in texts]
        else:  # the answer follows the generation prompt; it ends where an answer ends
            sequences = [tok(text, add_special_tokens=False)["input_ids"] + [chat_stops[0]] for text in texts]
    return Constraint(("enum", key, tuple(enum)), LabelTrie(sequences), max(map(len, sequences)))
