"""The OpenAI-compatible API backend's engine: the remote twin of the transformers backend's paths.

The prompts are the same messages (``build_messages``). What differs is what an HTTP endpoint offers:

- **No tokenizer.** Inputs are cut to ``budget.max_input_tokens`` by a rule of thumb, ``CHARS_PER_TOKEN`` (4)
  characters per token (about right for English with the GPT/Llama BPE vocabularies), and cuts are counted in
  ``details["truncated_inputs"]``. Token counts and money come from the responses' ``usage``, never from this rule.
- **No label likelihoods.** Chat completions give log-probabilities of the tokens the model chose, not of a given
  continuation, so ``likelihood`` scoring is refused. Classification defaults to ``constrained``: the request asks
  for ``{"label": ...}`` under a JSON schema whose enum is the labels (``response_format``, structured outputs) and
  the prompt says so too; ``generate`` asks for free text. Both parse the answer the same way (``parse_label``): JSON
  first, else the text. An answer naming no label (or several) becomes the prediction ``""`` — never a label, so it
  is scored wrong, not dropped — and is counted in ``details["unparseable"]`` (and ``no_label_match``, the name every
  path uses) with its row id. An answer the endpoint cut at ``max_tokens`` (finish reason "length") is counted in
  ``details["truncated_generations"]``.

Every request is metered (``Meter.add_api_call``, priced by ``pricing.api_usd``); a cached answer counts its tokens
and price (what the configuration costs) but is marked as not sent (this run paid nothing for it).
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import TYPE_CHECKING, Sequence

from tqdm.auto import tqdm

from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.errors import UserError
from lmtailor.inference.backends.base import Answers, PredictRequest
from lmtailor.measure.meter import Meter
from lmtailor.prompting.exemplars import cut_exemplars, exemplars_per_row, shot_count
from lmtailor.prompting.formats import build_messages, format_of, raw_text
from lmtailor.remote.client import ApiResult, OpenAIEndpoint

if TYPE_CHECKING:
    from lmtailor.core.budget import Budget

CHARS_PER_TOKEN = 4
REMOTE_MODES = ("constrained", "generate")
log = logging.getLogger("lmtailor")
_ANSWER_SHOWN = 200  # characters of an unparseable answer kept in the details, to see what the model said


def approx_token_count(text: str) -> int:
    """Tokens of ``text`` by the rule of thumb: one per ``CHARS_PER_TOKEN`` characters, rounded up."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def cut_to_approx_tokens(text: str, max_tokens: int) -> tuple[str, bool]:
    """``text`` cut to ``max_tokens × CHARS_PER_TOKEN`` characters (about ``max_tokens`` tokens); (text, was it cut)."""
    limit = max(0, max_tokens) * CHARS_PER_TOKEN
    return (text, False) if len(text) <= limit else (text[:limit], True)


def api_messages(messages: list[dict]) -> list[dict]:
    """Messages as the chat API takes them: role and content. A row laid out as alpaca or plain text is sent as
    that text in one user turn (the endpoint's chat template wraps it, as it would any user text)."""
    fmt = format_of(messages)
    if fmt == "chat":
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    return [{"role": "user", "content": raw_text(messages, fmt).rstrip()}]


def answer_schema(labels: Sequence[str]) -> dict:
    """The ``response_format`` of constrained scoring: an object whose one field ``label`` is one of ``labels``."""
    schema = {"type": "object", "properties": {"label": {"type": "string", "enum": list(labels)}},
              "required": ["label"], "additionalProperties": False}
    return {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": schema}}


def answer_instruction(labels: Sequence[str]) -> str:
    """The prompt line of constrained scoring (a server may ignore ``response_format``; the model still reads this)."""
    return ('Reply with only a JSON object of the form {"label": "..."} whose label is one of: '
            + ", ".join(json.dumps(label, ensure_ascii=False) for label in labels) + ".")


def parse_label(text: str, labels: Sequence[str]) -> tuple[str | None, str | None]:
    """The label an answer names, and how it was read ("json" or "text"); (None, None) when it names none or several.

    JSON ``{"label": X}`` first (a Markdown code fence around it is allowed); else the text: exactly a label
    (ignoring case, quotes and a final period), or exactly one label appearing as a whole word — where one label
    inside a longer one ("spam" in "not spam") counts as the longer one only.
    """
    body = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    try:
        obj = json.loads(body)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("label"), str):
        label = _named_label(obj["label"], labels)
        return (label, "json") if label is not None else (None, None)
    label = _named_label(text, labels)
    return (label, "text") if label is not None else (None, None)


def _named_label(text: str, labels: Sequence[str]) -> str | None:
    wanted = text.strip().strip("\"'`").rstrip(".").strip()
    for same in (lambda a, b: a == b, lambda a, b: a.casefold() == b.casefold()):
        exact = [label for label in labels if same(label, wanted)]
        if len(exact) == 1:
            return exact[0]
    spans = [(m.start(), m.end(), label) for label in labels
             for m in re.finditer(rf"(?<!\w){re.escape(label)}(?!\w)", text, re.IGNORECASE)]
    # a match inside a longer label's match is that longer label, not a second answer
    kept = {label for s, e, label in spans
            if not any(s2 <= s and e <= e2 and (e2 - s2) > (e - s) for s2, e2, _ in spans)}
    return kept.pop() if len(kept) == 1 else None


def remote_labels(task: TaskSpec) -> tuple[str, ...]:
    """The labels an answer must name: a classification task's, none for other tasks."""
    return tuple(task.labels or ()) if task.type == "classification" else ()


def default_remote_mode(task: TaskSpec) -> str:
    """Constrained (a JSON answer limited to the labels) for a task with labels, generate otherwise."""
    return "constrained" if remote_labels(task) else "generate"


def check_remote_request(task: TaskSpec, mode: str, calibrate: bool, model_ref: str) -> None:
    """Refuse calibration (an endpoint gives no label likelihoods), a classification task without labels, and a
    scoring mode an endpoint cannot do."""
    if calibrate:
        raise UserError(f"calibrate: true needs every label's likelihood, which an API model ({model_ref}) does not "
                        "give; remove calibrate for this model (set the strategy's models to the local ones it "
                        "should run on)")
    if task.type == "classification" and not task.labels:
        raise UserError(f"task {task.name!r} is a classification task without labels; set task.labels")
    check_remote_mode(task, mode)


def check_remote_mode(task: TaskSpec, mode: str) -> None:
    """Refuse a scoring mode an endpoint cannot do, or a label mode on a task without labels."""
    if mode == "likelihood":
        raise UserError("scoring: likelihood needs the log-probability of every label's tokens after the prompt, "
                        "which an OpenAI-compatible endpoint does not give; use scoring: constrained (the answer is "
                        "a JSON object whose label is constrained to the task's labels) or scoring: generate")
    if mode not in REMOTE_MODES:
        raise UserError(f"unknown scoring mode {mode!r} for an API model; use one of {', '.join(REMOTE_MODES)}")
    if mode != "generate" and not (task.type == "classification" and task.labels):
        raise UserError(f"scoring mode {mode!r} chooses among the task's labels, but task {task.name!r} "
                        f"({task.type}) has none; use scoring: generate")


def predict_remote(endpoint: OpenAIEndpoint, request: PredictRequest, meter: Meter) -> Answers:
    """Return a prediction per row (aligned with ``request.rows``) and details; meters every request into ``meter``.

    Both modes send one request per row (``constrained`` asks for a JSON label under a schema, ``generate`` for free
    text); on a task with labels, either answer is read as a label (``parse_label``)."""
    task, rows, budget, mode = request.task, request.rows, request.budget, str(request.mode)
    labels = remote_labels(task)
    cuts = [cut_to_approx_tokens(r.input, budget.max_input_tokens) for r in rows]
    texts, cut_rows = [text for text, _ in cuts], sum(cut for _, cut in cuts)
    shots, cut_shots = cut_exemplars(exemplars_per_row(request.exemplars, len(rows)),
                                     lambda text: cut_to_approx_tokens(text, budget.max_input_tokens))
    if mode == "constrained":  # exemplars answer in the asked JSON
        shots = [[Example(ex.id, ex.input, json.dumps({"label": ex.target}, ensure_ascii=False), ex.meta)
                  for ex in row] for row in shots]
    details: dict = {"mode": mode, "rows": len(rows), "shots": shot_count(request.exemplars),
                     "truncated_inputs": cut_rows, "truncated_exemplar_inputs": cut_shots,
                     "input_cut_rule": f"{CHARS_PER_TOKEN} characters per token (no tokenizer for an API model)",
                     "endpoint": {"model": endpoint.model, "base_url": endpoint.base_url}}
    if not rows:
        return [], details
    bodies, max_tokens = _bodies(task, rows, texts, shots, labels, mode, budget)
    details["max_tokens"] = max_tokens
    results = _send(endpoint, bodies, meter, details, request.progress_desc or mode)
    if labels:
        predictions = _labels_of(results, rows, labels, details)
    else:
        predictions = [r.text.strip() for r in results]
        details["truncated_generations"] = sum(r.finish_reason == "length" for r in results)
    return predictions, details


def _bodies(task: TaskSpec, rows, texts, shots, labels, mode: str, budget: "Budget") -> tuple[list[dict], int]:
    """One chat-completion body per row (greedy), and the max_tokens they ask for."""
    max_tokens = budget.max_new_tokens
    if mode == "constrained":  # room for the longest JSON answer, whatever max_new_tokens says
        longest = max(labels, key=len)
        max_tokens = max(max_tokens, approx_token_count(json.dumps({"label": longest}, ensure_ascii=False)) + 16)
    bodies = []
    for row, text, row_shots in zip(rows, texts, shots):
        meta = row.meta
        if mode == "constrained" and meta.get("exemplars"):  # a row's own worked examples answer in JSON too
            meta = {**meta, "exemplars": [Example(ex.id, ex.input, json.dumps({"label": ex.target}, ensure_ascii=False),
                                                  ex.meta) for ex in meta["exemplars"]]}
        messages = build_messages(task, text, row_shots, meta)
        if mode == "constrained":
            last = messages[-1]
            line = answer_instruction(labels)
            last["content"] = f"{last['content']}\n\n{line}"
            last["instruction"] = f"{last.get('instruction', '')}\n{line}".strip()  # the alpaca/plain layouts
        body = {"messages": api_messages(messages), "max_tokens": max_tokens, "temperature": 0}
        if mode == "constrained":
            body["response_format"] = answer_schema(labels)
        bodies.append(body)
    return bodies, max_tokens


def _send(endpoint: OpenAIEndpoint, bodies: list[dict], meter: Meter, details: dict, desc: str) -> list[ApiResult]:
    """Send the bodies under a progress bar, metering each answer as it arrives; record the API totals."""
    pricing = meter.pricing
    bar = tqdm(total=len(bodies), desc=desc, unit="row")

    def on_result(_: int, r: ApiResult) -> None:
        meter.add_api_call("inference", r.input_tokens, r.output_tokens,
                           pricing.api_usd(endpoint.model, r.input_tokens, r.output_tokens), sent=not r.cached,
                           latency_s=r.latency_s, model=endpoint.model)
        bar.update(1)

    try:
        results = endpoint.chat_completions(bodies, on_result=on_result)
    finally:
        bar.close()
    tokens_in, tokens_out = sum(r.input_tokens for r in results), sum(r.output_tokens for r in results)
    meter.add_tokens("inference", tokens_in + tokens_out)
    meter.add_examples("inference", len(results))
    price, source = pricing.api_price(endpoint.model)
    usd = [pricing.api_usd(endpoint.model, r.input_tokens, r.output_tokens) for r in results]
    details["tokens"] = tokens_in + tokens_out
    details["api"] = {
        "requests": len(results), "cache_hits": sum(r.cached for r in results),
        "input_tokens": tokens_in, "output_tokens": tokens_out,
        "usd": sum(usd), "usd_spent": sum(u for u, r in zip(usd, results) if not r.cached),
        "price_source": source, "usd_per_1m": {"input": price.input_usd_per_1m, "output": price.output_usd_per_1m},
        # the server reported no usage for these: their tokens (and so their price) are unknown, counted as 0
        "requests_without_usage": sum(not r.usage_known for r in results),
    }
    if details["api"]["requests_without_usage"]:  # their cost is unknown, not zero: say so where it is seen
        log.warning("%s: %d of %d answers from %s reported no token usage: their tokens and $ are counted as 0, so "
                    "this row's cost is understated", desc, details["api"]["requests_without_usage"], len(results),
                    endpoint.base_url)
    return results


def _labels_of(results: list[ApiResult], rows, labels: tuple[str, ...], details: dict) -> list[str]:
    """Each answer's label, or "" (scored wrong) when it names none; counts the unparseable and text recoveries."""
    predictions, unparseable, from_text = [], {}, 0
    for row, r in zip(rows, results):
        label, how = parse_label(r.text, labels)
        if label is None:
            unparseable[row.id] = r.text[:_ANSWER_SHOWN]
        from_text += how == "text"
        predictions.append(label or "")
    # no_label_match: the same count under the name every path uses (a no-label answer is wrong on every path)
    details.update({"labels": list(labels), "unparseable": len(unparseable), "no_label_match": len(unparseable),
                    "unparseable_row_ids": list(unparseable), "unparseable_answers": unparseable,
                    "parsed_from_text": from_text,
                    "truncated_generations": sum(r.finish_reason == "length" for r in results)})
    return predictions
