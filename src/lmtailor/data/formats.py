"""Instruction formats: task rows -> chat messages -> token ids, the same way for training and for inference.

A row becomes a user turn (the task instruction, for classification the allowed labels, then the input) and its
answer an assistant turn. Few-shot exemplars are earlier user/assistant turns. Tokenizers with a chat template
render through it; the others get a plain ``INSTRUCTION: … INPUT: … RESPONSE:`` template whose answers end with
eos. Training (loss on the completion ids) and label scoring both go through ``encode_prompt_completion``, so a
tuned model is scored on exactly the tokens it learnt.
"""

from __future__ import annotations

import weakref
from typing import Sequence

from lmtailor.data.example import Example
from lmtailor.errors import UserError
from lmtailor.tasks.base import TaskSpec


def _user_turn(task: TaskSpec, input_text: str) -> dict:
    instruction = task.instruction.strip()
    if not instruction:  # a model tuned on the task no longer needs to be told it: the turn is the bare input
        return {"role": "user", "content": input_text, "instruction": "", "input": input_text}
    if task.type == "classification" and task.labels:
        instruction += "\nAnswer with exactly one of these labels: " + ", ".join(task.labels) + "."
    # The parts are kept beside the rendered content so the plain template can lay them out its own way;
    # chat templates only see role and content.
    return {"role": "user", "content": f"{instruction}\n\nInput:\n{input_text}",
            "instruction": instruction, "input": input_text}


def build_messages(task: TaskSpec, input_text: str, exemplars: Sequence[Example] = ()) -> list[dict]:
    """Return chat messages: one user/assistant pair per exemplar, then the row's user turn."""
    messages: list[dict] = []
    for ex in exemplars:
        messages.append(_user_turn(task, ex.input))
        messages.append({"role": "assistant", "content": ex.target})
    messages.append(_user_turn(task, input_text))
    return messages


def has_chat_template(tokenizer) -> bool:
    """Whether the tokenizer carries a chat template (else the plain template is used)."""
    return bool(getattr(tokenizer, "chat_template", None))


def _chat_view(messages: list[dict]) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _plain_text(tokenizer, messages: list[dict]) -> str:
    """Render messages with the plain template (every user turn ends with "RESPONSE:"; answers are " answer" + eos)."""
    if not tokenizer.eos_token:
        raise UserError("this tokenizer has neither a chat template nor an eos token, so answers have no end "
                        "marker to score or stop at; set tokenizer.chat_template or use another model")
    parts = []
    for m in messages:
        if m["role"] == "user":
            parts.append(f"INSTRUCTION: {m.get('instruction', '')}\n\nINPUT: {m.get('input', m['content'])}"
                         "\n\nRESPONSE:")
        elif m["role"] == "assistant":
            # The space starts the answer rather than ending the prompt: BPE vocabularies hold " word" as one
            # token, so "RESPONSE:" + " positive" tokenizes the same alone as inside the whole text.
            parts.append(f" {m['content']}{tokenizer.eos_token}\n\n")
        else:
            parts.append(f"{m['content']}\n\n")  # a system turn: plain text ahead of the rest
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


def _tokenize(tokenizer, text: str) -> list[int]:
    # Special tokens are added by hand: chat templates write BOS themselves where the model wants it, and the
    # tokenizer's own defaults may also append EOS (which would break the prompt-is-a-prefix property).
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if _adds_bos(tokenizer) and (not ids or ids[0] != tokenizer.bos_token_id):
        ids = [tokenizer.bos_token_id] + ids
    return ids


def render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    """Render messages as text: chat template when the tokenizer has one, else the plain template."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(_chat_view(messages), tokenize=False,
                                             add_generation_prompt=generation_prompt)
    return _plain_text(tokenizer, messages)


def encode_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of the prompt up to where the assistant's answer starts."""
    return _tokenize(tokenizer, render(tokenizer, messages, generation_prompt=True))


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
    the end-of-turn (chat template) or eos (plain template) token."""
    prompt_text = render(tokenizer, messages, generation_prompt=True)
    full_text = render(tokenizer, [*messages, {"role": "assistant", "content": completion}], generation_prompt=False)
    prompt_ids = _tokenize(tokenizer, prompt_text)
    if not full_text.startswith(prompt_text):
        raise UserError("the tokenizer's chat template renders the conversation differently once the answer is "
                        "added (the prompt is not a prefix of prompt + answer), so the answer's tokens cannot be "
                        "located; use a tokenizer whose template only appends the assistant turn")
    full_ids = _tokenize(tokenizer, full_text)
    if full_ids[: len(prompt_ids)] == prompt_ids:
        completion_ids = full_ids[len(prompt_ids):]
    else:
        # The tokenizer merged characters across the prompt/answer boundary, so the whole text's tokens do not
        # start with the prompt's. Tokenizing the answer on its own keeps prompt_ids exactly what inference feeds
        # the model (training and scoring still agree; only the boundary tokenization differs from the whole).
        completion_ids = tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
    return prompt_ids, _trim_after_end(tokenizer, completion_ids)


def stop_token_ids(tokenizer) -> tuple[int, ...]:
    """Token ids that end an answer: the template's end-of-turn token and eos."""
    from lmtailor.tasks.base import TaskSpec as _Spec

    probe = _Spec("probe", "generation", "Reply.")
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
