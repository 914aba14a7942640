"""Instruction formats: task rows -> messages -> token ids, the same way for training and for inference.

A row becomes a user turn (an instruction, for classification the allowed labels, then the input) and its answer an
assistant turn. Few-shot exemplars are earlier user/assistant turns; a row read from a conversation
(``data.format: messages``) brings its system text and earlier turns along. The instruction is the row's own when it
has one (``meta["instruction"]``: an Alpaca row's ``instruction``, or "" for a conversation, whose user turn is the
whole request), else ``TaskSpec.instruction``; the label list follows it while the task's instruction is shown.

``TaskSpec.prompt_format`` picks the layout, and the messages record it, so every function below renders the same:

- ``chat``: the messages through the tokenizer's chat template; a tokenizer without one gets the plain layout.
- ``alpaca``: the Stanford Alpaca text, answers followed by eos::

      Below is an instruction that describes a task, paired with an input that provides further context. Write a
      response that appropriately completes the request.

      ### Instruction:
      {instruction}

      ### Input:
      {input}

      ### Response:
      {answer}</s>

  and, when the row has no separate input, the no-input variant ("Below is an instruction that describes a task.
  Write a response …", no ``### Input:`` section).
- ``plain``: ``INSTRUCTION: … INPUT: … RESPONSE:`` with answers " answer" + eos.

alpaca and plain are raw-text templates used as they are, even when the tokenizer has a chat template. That is what
a model tuned on Alpaca-style text expects, and what the fine-tuning tools do: LLaMA-Factory's ``template: alpaca``
replaces the model's own template, and Axolotl's ``type: alpaca`` writes the Alpaca text as is. Wrapping the Alpaca
text in a chat turn would give a layout that neither an Alpaca-tuned model nor the chat model was trained on; whoever
wants the model's chat template picks ``chat``. Several turns (exemplars, earlier turns) follow LLaMA-Factory: the
preamble (or the row's system text) once, then one instruction/response block per turn, each answer ending with eos.
When a turn has only one text (an Alpaca row with an empty input, a conversation turn, a tuned model shown the bare
input), that text takes the instruction slot: Alpaca's no-input variant.

Training (loss on the completion ids) and label scoring both go through ``encode_prompt_completion``, so a tuned
model is scored on exactly the tokens it learnt, and the prompt ids are those inference feeds.
"""

from __future__ import annotations

import weakref
from typing import Any, Mapping, Sequence

from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.errors import UserError

PROMPT_FORMATS = ("chat", "alpaca", "plain")

# Stanford Alpaca's two preambles (tatsu-lab/stanford_alpaca train.py; the same in Axolotl's AlpacaPrompter).
ALPACA_PREAMBLE = ("Below is an instruction that describes a task, paired with an input that provides further "
                   "context. Write a response that appropriately completes the request.\n\n")
ALPACA_PREAMBLE_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
                            "completes the request.\n\n")


def check_format(name: str) -> str:
    """Return ``name`` if it is a known prompt format, else raise naming the known ones."""
    if name not in PROMPT_FORMATS:
        raise UserError(f"unknown instruction format {name!r}; use one of {', '.join(PROMPT_FORMATS)}")
    return name


def instruction_for(task: TaskSpec, meta: Mapping[str, Any] | None = None) -> str:
    """The instruction a row is shown (without the label list): its own when it carries one, else the task's."""
    own = (meta or {}).get("instruction")
    return (task.instruction if own is None else own).strip()


def shows_labels(task: TaskSpec) -> bool:
    """Whether prompts list the allowed labels: for classification, while the task's instruction is shown (a model
    tuned without the instruction is shown neither)."""
    return task.type == "classification" and bool(task.labels) and bool(task.instruction.strip())


def _user_turn(task: TaskSpec, input_text: str, meta: Mapping[str, Any] | None = None) -> dict:
    instruction = instruction_for(task, meta)
    if instruction and shows_labels(task):
        instruction += "\nAnswer with exactly one of these labels: " + ", ".join(task.labels) + "."
    content = f"{instruction}\n\nInput:\n{input_text}" if instruction and input_text else instruction or input_text
    # The parts are kept beside the rendered content so the raw templates can lay them out their own way;
    # chat templates only see role and content.
    return {"role": "user", "content": content, "instruction": instruction, "input": input_text}


def _history(meta: Mapping[str, Any] | None) -> list[dict]:
    """A conversation row's earlier turns; a user turn there is a whole request (it takes the instruction slot)."""
    turns = []
    for t in (meta or {}).get("history") or ():
        turn = {"role": t["role"], "content": t["content"]}
        if t["role"] == "user":
            turn.update(instruction=t["content"], input="")
        turns.append(turn)
    return turns


def row_exemplars(exemplars: Sequence[Example], meta: Mapping[str, Any] | None) -> list[Example]:
    """The exemplars one row is shown: the shared ones, then the row's own (``meta["exemplars"]``)."""
    return [*exemplars, *((meta or {}).get("exemplars") or ())]


def build_messages(task: TaskSpec, input_text: str, exemplars: Sequence[Example] = (),
                   meta: Mapping[str, Any] | None = None) -> list[dict]:
    """Return messages for one row: its system text, a user/assistant pair per exemplar, its earlier turns, then its
    user turn. ``meta`` is the row's ``Example.meta`` (own instruction, system text, earlier turns, when it has them;
    its own worked examples in ``meta["exemplars"]``, shown after ``exemplars``: the training rows a ``task:train``
    corpus retrieved for it); every message records ``task.prompt_format`` so rendering needs nothing else."""
    fmt = check_format(task.prompt_format)
    messages: list[dict] = []
    if (meta or {}).get("system"):
        messages.append({"role": "system", "content": meta["system"]})
    for ex in row_exemplars(exemplars, meta):
        messages += _history(ex.meta)
        messages.append(_user_turn(task, ex.input, ex.meta))
        messages.append({"role": "assistant", "content": ex.target})
    messages += _history(meta)
    messages.append(_user_turn(task, input_text, meta))
    for m in messages:
        m["format"] = fmt
    return messages


def has_chat_template(tokenizer) -> bool:
    """Whether the tokenizer carries a chat template (else the chat format falls back to the plain template)."""
    return bool(getattr(tokenizer, "chat_template", None))


def format_of(messages: Sequence[Mapping[str, Any]]) -> str:
    """The prompt format ``build_messages`` recorded in the messages ("chat" for messages built by hand)."""
    return check_format(messages[0].get("format", "chat")) if messages else "chat"


def _chat_view(messages: list[dict]) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _alpaca_user(instruction: str, input_text: str) -> str:
    if instruction and input_text:
        return f"### Instruction:\n{instruction}\n\n### Input:\n{input_text}\n\n### Response:\n"
    return f"### Instruction:\n{instruction or input_text}\n\n### Response:\n"


def _plain_user(instruction: str, input_text: str) -> str:
    if instruction and input_text:
        return f"INSTRUCTION: {instruction}\n\nINPUT: {input_text}\n\nRESPONSE:"
    return f"INSTRUCTION: {instruction or input_text}\n\nRESPONSE:"


def raw_text(messages: Sequence[Mapping[str, Any]], fmt: str, answer_end: str = "") -> str:
    """Lay messages out with the alpaca or plain template; each answer is followed by ``answer_end`` (the eos token
    where a decoder learns where answers stop) and a blank line."""
    if fmt not in ("alpaca", "plain"):
        raise ValueError(f"raw_text lays out alpaca or plain text, not {fmt!r}")
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    parts = []
    if fmt == "alpaca":  # the preamble is Alpaca's system text: a row's own system text takes its place
        last = next((m for m in reversed(messages) if m["role"] == "user"), {})
        both = bool(last.get("instruction") and last.get("input"))
        parts.append(f"{system}\n\n" if system else ALPACA_PREAMBLE if both else ALPACA_PREAMBLE_NO_INPUT)
    elif system:
        parts.append(f"{system}\n\n")
    for m in messages:
        if m["role"] == "user":
            user = _alpaca_user if fmt == "alpaca" else _plain_user
            parts.append(user(m.get("instruction", m["content"]), m.get("input", "")))
        elif m["role"] == "assistant":
            # plain: the space starts the answer rather than ending the prompt: BPE vocabularies hold " word" as one
            # token, so "RESPONSE:" + " positive" tokenizes the same alone as inside the whole text. Alpaca's
            # prompt ends with a newline, which never merges with the answer's first token.
            space = " " if fmt == "plain" else ""
            parts.append(f"{space}{m['content']}{answer_end}\n\n")
    return "".join(parts)


_ADDS_BOS: "weakref.WeakKeyDictionary[object, bool]" = weakref.WeakKeyDictionary()


def _adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS first when left to its defaults (the model was trained to expect it).

    Probed once per tokenizer: this runs for every prompt, and the answer cannot change.
    """
    if tokenizer not in _ADDS_BOS:
        bos = tokenizer.bos_token_id
        ids = tokenizer("a", add_special_tokens=True)["input_ids"] if bos is not None else []
        _ADDS_BOS[tokenizer] = bool(ids) and ids[0] == bos
    return _ADDS_BOS[tokenizer]


def tokenize_text(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` with BOS first when the model expects it, and nothing else added."""
    # Special tokens are added by hand: chat templates write BOS themselves where the model wants it, and the
    # tokenizer's own defaults may also append EOS (which would break the prompt-is-a-prefix property).
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if _adds_bos(tokenizer) and (not ids or ids[0] != tokenizer.bos_token_id):
        ids = [tokenizer.bos_token_id] + ids
    return ids


def _apply_chat_template(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(_chat_view(messages), tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except TemplateError as e:  # e.g. a template that refuses a system turn, raised from inside the template
        roles = ", ".join(m["role"] for m in messages)
        raise UserError(f"the model's chat template refused the conversation (roles {roles}): {e}; use "
                        "instruction_format: alpaca or plain, or rows without the turns it refuses") from None


def render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    """Render messages as text in the format they record: the chat template (chat, when the tokenizer has one),
    else the alpaca or plain template."""
    fmt = format_of(messages)
    if fmt == "chat" and has_chat_template(tokenizer):
        return _apply_chat_template(tokenizer, messages, generation_prompt)
    if not tokenizer.eos_token:
        raise UserError(f"the {'plain' if fmt == 'chat' else fmt} template ends answers with the eos token, but this "
                        "tokenizer has none (and no chat template), so answers have no end marker to score or stop "
                        "at; set tokenizer.chat_template and use instruction_format: chat, or use another model")
    return raw_text(messages, "plain" if fmt == "chat" else fmt, tokenizer.eos_token)


def encode_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of the prompt up to where the assistant's answer starts."""
    return tokenize_text(tokenizer, render(tokenizer, messages, generation_prompt=True))
def _is_special(tokenizer, token_id: int) -> bool:
    if token_id == tokenizer.eos_token_id or token_id in tokenizer.all_special_ids:
        return True
    added = (getattr(tokenizer, "added_tokens_decoder", None) or {}).get(token_id)
    return bool(getattr(added, "special", False))


def _trim_after_end(tokenizer, ids: list[int]) -> list[int]:
    """Drop what templates write after the end-of-turn token (a newline), so the answer ends with that token."""
    end = len(ids)
    while end > 0 and not _is_special(tokenizer, ids[end - 1]) and not tokenizer.decode(ids[end - 1:end]).strip():
        end -= 1
    ids = ids[:end]
    if not ids or not _is_special(tokenizer, ids[-1]):
        if tokenizer.eos_token_id is None:
            raise UserError("the chat template writes no end-of-turn token after the answer and the tokenizer has "
                            "no eos token: answers would have no end to score or stop at")
        ids = ids + [tokenizer.eos_token_id]
    return ids


def encode_prompt_completion(tokenizer, messages: list[dict], completion: str) -> tuple[list[int], list[int]]:
    """Return (prompt_ids, completion_ids): the prompt as ``encode_prompt`` gives it, and the answer ending with
    the end-of-turn (chat template) or eos (alpaca and plain templates) token."""
    prompt_text = render(tokenizer, messages, generation_prompt=True)
    full_text = render(tokenizer, [*messages, {"role": "assistant", "content": completion}], generation_prompt=False)
    prompt_ids = tokenize_text(tokenizer, prompt_text)
    if not full_text.startswith(prompt_text):
        raise UserError("the tokenizer's chat template renders the conversation differently once the answer is "
                        "added (the prompt is not a prefix of prompt + answer), so the answer's tokens cannot be "
                        "located; use a tokenizer whose template only appends the assistant turn")
    full_ids = tokenize_text(tokenizer, full_text)
    if full_ids[: len(prompt_ids)] == prompt_ids:
        completion_ids = full_ids[len(prompt_ids):]
    else:
        # The tokenizer merged characters across the prompt/answer boundary, so the whole text's tokens do not
        # start with the prompt's. Tokenizing the answer on its own keeps prompt_ids exactly what inference feeds
        # the model (training and scoring still agree; only the boundary tokenization differs from the whole).
        completion_ids = tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
    return prompt_ids, _trim_after_end(tokenizer, completion_ids)


def stop_token_ids(tokenizer) -> tuple[int, ...]:
    """Token ids that end an answer in any format: the chat template's end-of-turn token and eos."""
    probe = TaskSpec("probe", "generation", "Reply.")
    _, completion = encode_prompt_completion(tokenizer, build_messages(probe, "x"), "ok")
    ids = [completion[-1]]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return tuple(ids)


def truncate_text(tokenizer, text: str, max_tokens: int) -> tuple[str, bool]:
    """Cut ``text`` to its first ``max_tokens`` tokens; return (text, whether it was cut)."""
    if max_tokens <= 0:
        return "", bool(text)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) <= max_tokens:
            return text, False
        return text[: enc["offset_mapping"][max_tokens - 1][1]], True
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text, False
    return tokenizer.decode(ids[:max_tokens]).rstrip("\ufffd"), True
