"""Instruction formats: the prompt is a prefix of prompt + answer, answers end with an end token, cuts are honest."""

from __future__ import annotations

import pytest

from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.models import load_tokenizer
from lmtailor.prompting.formats import (build_messages, encode_prompt, encode_prompt_completion, render, stop_token_ids,
                                        truncate_text)

TASK = TaskSpec("colours", "classification", "Which colour word does the text contain?", ("red", "green", "blue"))


@pytest.fixture(scope="module")
def chat_tok(tiny_llama_dir):
    return load_tokenizer(str(tiny_llama_dir))


@pytest.fixture(scope="module")
def plain_tok(tiny_llama_dir):
    tok = load_tokenizer(str(tiny_llama_dir))
    tok.chat_template = None  # the plain INSTRUCTION/INPUT/RESPONSE template
    return tok


def test_user_turn_names_instruction_labels_and_input():
    (turn,) = build_messages(TASK, "a red stone")
    assert turn["role"] == "user"
    assert "Which colour word" in turn["content"] and "red, green, blue" in turn["content"]
    assert turn["content"].endswith("a red stone")


def test_exemplars_become_earlier_turns_in_order():
    shots = [Example("a", "x green", "green"), Example("b", "y blue", "blue")]
    messages = build_messages(TASK, "z red", shots)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert [messages[1]["content"], messages[3]["content"]] == ["green", "blue"]


@pytest.mark.parametrize("tok_name", ["chat_tok", "plain_tok"])
def test_completion_follows_prompt_and_ends_with_a_stop_token(request, tok_name):
    tok = request.getfixturevalue(tok_name)
    messages = build_messages(TASK, "the river is blue today", [Example("s", "a green hill", "green")])
    prompt, completion = encode_prompt_completion(tok, messages, "blue")
    assert prompt == encode_prompt(tok, messages)  # what inference feeds is what training conditioned on
    assert completion[-1] in stop_token_ids(tok)
    assert tok.decode(completion, skip_special_tokens=True).strip() == "blue"


def test_chat_template_is_used_when_the_tokenizer_has_one(chat_tok, plain_tok):
    messages = build_messages(TASK, "red")
    assert render(chat_tok, messages, generation_prompt=True).endswith("<|im_start|>assistant\n")
    plain = render(plain_tok, messages, generation_prompt=True)
    assert plain.startswith("INSTRUCTION: ") and plain.endswith("RESPONSE:")


def test_stop_tokens_include_the_end_of_turn(chat_tok):
    assert chat_tok.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(chat_tok)


def test_truncate_text_cuts_to_the_token_budget_and_says_so(chat_tok):
    text = "the quick brown fox jumps over the lazy dog " * 5
    cut, was_cut = truncate_text(chat_tok, text, 7)
    assert was_cut and text.startswith(cut)
    assert len(chat_tok(cut, add_special_tokens=False)["input_ids"]) == 7
    assert truncate_text(chat_tok, "short", 50) == ("short", False)
    assert truncate_text(chat_tok, "anything", 0) == ("", True)


def test_no_instruction_means_the_bare_input(chat_tok):
    bare = TaskSpec("colours", "classification", "", TASK.labels)
    (turn,) = build_messages(bare, "a red stone")
    assert turn["content"] == "a red stone"
    assert len(encode_prompt(chat_tok, [turn])) < len(encode_prompt(chat_tok, build_messages(TASK, "a red stone")))
