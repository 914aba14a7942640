"""The OpenAI request shapes the server accepts, its limits, and OpenAI's error shape.

Requests are validated strictly (pydantic strict mode, unknown fields refused), so a wrong type is a 400 naming the
field rather than a silent coercion. Options the OpenAI API has but this server does not implement (log
probabilities, tools, penalties, several choices) are declared so that using them says "not supported" instead of
"unrecognized"; leaving them at their neutral value is accepted, as clients often send the defaults explicitly.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ErrorType = Literal["invalid_request_error", "server_error"]

MAX_STOP_STRINGS = 4  # as OpenAI
# Below this a temperature decodes greedily (as vLLM): logits / T overflow float32 to inf (a 500) near 1e-38, and
# long before that sampling is the argmax anyway.
GREEDY_BELOW_TEMPERATURE = 1e-5


class APIError(Exception):
    """An answer in OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: ErrorType | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or ("server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """The JSON body of the answer."""
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    """A content part of a message; only text parts are served (others are refused by ``message_text``)."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: str
    text: str | None = None


class Message(_Strict):
    """One chat message. ``developer`` is OpenAI's newer name for ``system``."""

    role: str
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: Any = None  # refused with "not supported" when set
    tool_call_id: Any = None
    function_call: Any = None
    refusal: Any = None


class StreamOptions(_Strict):
    """``stream_options``: whether the last chunk of a stream carries the usage."""

    include_usage: bool = False


class _Generation(_Strict):
    """Fields common to chat and text completions."""

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    # OpenAI options this server does not implement: accepted only at their neutral value (see UNSUPPORTED)
    logprobs: Any = None
    top_logprobs: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    logit_bias: Any = None


class ChatRequest(_Generation):
    """POST /v1/chat/completions."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None  # the newer name of max_tokens
    response_format: dict[str, Any] | None = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    service_tier: Any = None
    store: Any = None
    metadata: Any = None


class CompletionRequest(_Generation):
    """POST /v1/completions."""

    prompt: str | list[str]
    echo: Any = None
    best_of: Any = None
    suffix: Any = None


# Neutral values of the options this server does not implement; anything else is a 400 saying so.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False, 0), "top_logprobs": (None, 0), "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0), "logit_bias": (None, {}), "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "parallel_tool_calls": (None, True, False), "functions": (None, []), "function_call": (None, "none"),
    "audio": (None,), "modalities": (None, ["text"]), "prediction": (None,), "reasoning_effort": (None,),
    "service_tier": (None, "auto", "default"), "store": (None, False), "metadata": (None, {}), "echo": (None, False),
    "best_of": (None, 1), "suffix": (None, ""), "tool_calls": (None, []), "tool_call_id": (None,),
    "refusal": (None,),
}
UNSUPPORTED = tuple(_NEUTRAL)

_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "json-or-python"}


def _param(loc: tuple) -> str:
    """The dotted field path of a validation error, without pydantic's union-member tags."""
    parts = [str(p) for p in loc
             if isinstance(p, int) or not (p in _TYPE_TAGS or "[" in p or p[:1].isupper() or p.startswith("function-"))]
    return ".".join(parts)


def _validation_error(e: ValidationError) -> APIError:
    errors = e.errors(include_url=False)
    first = errors[0]
    param = _param(first["loc"])
    kind = first["type"]
    if kind == "missing":
        return APIError(400, f"missing required parameter '{param}'", param, "missing_required_parameter")
    if kind == "extra_forbidden":
        return APIError(400, f"unrecognized request argument supplied: '{param}'", param, "unrecognized_parameter")
    # a union (content: string or list of parts) reports one error per member: say what the field accepts
    same = [err["msg"] for err in errors if _param(err["loc"]) == param]
    message = " or ".join(dict.fromkeys(same)) if len(same) > 1 else first["msg"]
    code = "invalid_type" if kind.endswith("_type") or kind in ("model_attributes_type",) else "invalid_value"
    return APIError(400, f"invalid '{param}': {message} (got {_shown(first.get('input'))})", param, code)


def _shown(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_request(model: type[_Generation], body: bytes) -> Any:
    """Parse and validate a request body; 400 in OpenAI's shape for bad JSON, a missing or wrong-typed field."""
    try:
        data = json.loads(body, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise APIError(400, f"the request body is not valid JSON ({e}); send a JSON object", None,
                       "invalid_json") from None
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply to be a request", None, "invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, not {type(data).__name__}", None, "invalid_json")
    _refuse_lone_surrogates(data)
    try:
        request = model.model_validate(data)
    except ValidationError as e:
        raise _validation_error(e) from None
    _refuse_unsupported(request)
    return request


_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse_lone_surrogates(data: dict[str, Any]) -> None:
    """400 for a string (key or value) holding a lone surrogate: JSON's ``\\udbff`` escape parses to one, but it is
    not Unicode text, so no tokenizer can take it nor can an answer quoting it be encoded."""
    stack: list[tuple[tuple[str, ...], Any]] = [((), data)]
    while stack:  # iterative: the body may nest as deeply as json.loads allowed
        path, value = stack.pop()
        if isinstance(value, str):
            texts = [(path, value)]
        elif isinstance(value, dict):
            texts = [(path + (json.dumps(k)[1:-1],), k) for k in value]
            stack.extend((path + (json.dumps(k)[1:-1],), v) for k, v in value.items())
        elif isinstance(value, list):
            texts = []
            stack.extend((path + (str(i),), v) for i, v in enumerate(value))
        else:
            continue
        for where, text in texts:
            if (found := _SURROGATE.search(text)) is not None:
                param = ".".join(where) or None
                raise APIError(400, f"'{param}' holds a lone surrogate ({json.dumps(found.group())}), which is not "
                                    "Unicode text: send UTF-8 text (a \\uD800-\\uDFFF escape must be half of a "
                                    "surrogate pair)", param, "invalid_value")


def _refuse_unsupported(request: _Generation) -> None:
    for name in UNSUPPORTED:
        value = getattr(request, name, None)
        if name in request.model_fields_set and value not in _NEUTRAL[name]:
            raise APIError(400, f"'{name}' is not supported by lmtailor serve; leave it out", name,
                           "unsupported_parameter")
    if request.n not in (None, 1):
        raise APIError(400, "'n' must be 1: lmtailor serve returns one choice per request (send several requests "
                            "for several answers)", "n", "unsupported_value")
    for i, message in enumerate(getattr(request, "messages", ())):
        for name in ("tool_calls", "tool_call_id", "function_call", "refusal"):
            if getattr(message, name) not in _NEUTRAL.get(name, (None,)):
                raise APIError(400, f"'messages.{i}.{name}' is not supported by lmtailor serve (no tool calls)",
                               f"messages.{i}.{name}", "unsupported_parameter")


def stop_strings(request: _Generation) -> tuple[str, ...]:
    """The request's ``stop`` as a tuple of non-empty strings (at most four, as OpenAI)."""
    stop = request.stop
    strings = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if len(strings) > MAX_STOP_STRINGS:
        raise APIError(400, f"'stop' takes at most {MAX_STOP_STRINGS} strings, got {len(strings)}", "stop",
                       "invalid_value")
    if any(s == "" for s in strings):
        raise APIError(400, "'stop' strings must not be empty", "stop", "invalid_value")
    return strings


def requested_max_tokens(request: _Generation, limit: int) -> int | None:
    """``max_tokens`` (or chat's ``max_completion_tokens``) checked against 1..``limit``; None when not given."""
    value, param = request.max_tokens, "max_tokens"
    newer = getattr(request, "max_completion_tokens", None)
    if newer is not None:
        if value is not None and value != newer:
            raise APIError(400, "'max_tokens' and 'max_completion_tokens' differ; send one of them",
                           "max_completion_tokens", "invalid_value")
        value, param = newer, "max_completion_tokens"
    if value is not None and not 1 <= value <= limit:
        raise APIError(400, f"'{param}' must be between 1 and {limit} (this server's --max-tokens-limit), got "
                            f"{value}", param, "invalid_value")
    return value


def message_text(message: Message, index: int) -> str:
    """The text of a message: its string content, or its text parts joined."""
    content = message.content
    if content is None:
        raise APIError(400, f"'messages.{index}.content' is missing: every message needs text content",
                       f"messages.{index}.content", "missing_required_parameter")
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type == "text" and part.text is None:
            raise APIError(400, f"'messages.{index}.content.{j}' is a text part without 'text'",
                           f"messages.{index}.content.{j}.text", "missing_required_parameter")
        if part.type != "text":
            raise APIError(400, f"'messages.{index}.content.{j}' is a {part.type!r} part, which is not supported: "
                                "lmtailor serve takes text parts only", f"messages.{index}.content.{j}",
                           "unsupported_value")
        texts.append(part.text)
    return "".join(texts)
