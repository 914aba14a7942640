"""Instruction formats (chat, alpaca, plain) and rows that carry their own instruction (Alpaca rows, messages).

The loss-mask tests go through the real path: ``build_sft_rows`` -> ``training/sft.py``'s ``build_trainer`` (TRL's
``SFTTrainer`` turns ``completion_mask`` into ``labels`` while preparing the dataset) -> the trainer's own collator.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from lmtailor.core.budget import Budget
from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.data.config import DataConfig
from lmtailor.data.loading import load_file
from lmtailor.data.prepare import prepare_data
from lmtailor.data.validate import DataError
from lmtailor.errors import UserError
from lmtailor.models import load_tokenizer
from lmtailor.prompting.formats import build_messages, encode_prompt, encode_prompt_completion, render
from lmtailor.prompting.seq2seq_format import source_text
from lmtailor.runtime import Runtime
from lmtailor.strategies.finetune import FinetuneConfig
from lmtailor.training.dataset import build_sft_rows

FORMATS = ("chat", "alpaca", "plain")
LABELS = ("red", "green", "blue")
TASK = TaskSpec("colours", "classification", "Which colour word does the text contain?", LABELS)
GEN = TaskSpec("summary", "generation", "Summarize the text in a few words.")
BUDGET = Budget(max_input_tokens=64, max_new_tokens=8, max_seq_len=256, eval_batch_size=4)
CPU = Runtime("cpu", "fp32", "tests run in fp32 on the CPU")

# Stanford Alpaca's prompt, written out here rather than imported, so the test checks the text itself.
ALPACA_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                     "context. Write a response that appropriately completes the request.\n\n"
                     "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")

# A row of each kind: named fields, an Alpaca row (own instruction), a conversation (system text, earlier turns).
ROWS = [
    Example("plain", "the river is blue today", "blue"),
    Example("alpaca", "a green hill", "green", {"instruction": "Name the colour in the text."}),
    Example("chat", "and the stone?", "red", {"instruction": "", "system": "Answer with one word.",
                                               "history": [{"role": "user", "content": "what colour is the sky?"},
                                                           {"role": "assistant", "content": "blue"}]}),
]


@pytest.fixture(scope="module")
def chat_tok(tiny_llama_dir):
    tok = load_tokenizer(str(tiny_llama_dir))
    assert tok.chat_template  # the tiny llama carries ChatML, like SmolLM2-Instruct
    return tok


@pytest.fixture(scope="module")
def bare_tok(tiny_llama_dir):
    tok = load_tokenizer(str(tiny_llama_dir))
    tok.chat_template = None
    return tok


@pytest.fixture(scope="module")
def tiny_model(tiny_llama_dir, one_torch_thread):
    from lmtailor.models import load_model

    return load_model(str(tiny_llama_dir), CPU).model


def _task(fmt: str, task: TaskSpec = TASK) -> TaskSpec:
    return replace(task, prompt_format=fmt)


def _collated_labels(model, tok, fmt: str, completion_only_loss: bool, out_dir: Path):
    """Token ids and the labels TRL trains on: SFTTrainer's dataset preparation, then its collator (with padding)."""
    from lmtailor.training.sft import build_trainer

    rows = build_sft_rows(tok, _task(fmt), ROWS, BUDGET)
    cfg = FinetuneConfig.model_validate({"name": "finetune", "method": "full", "completion_only_loss":
                                         completion_only_loss, "instruction_format": fmt, "padding_free": False})
    trainer = build_trainer(model, tok, cfg, cfg.method, rows.dataset, None, CPU, 0, out_dir, BUDGET.max_seq_len)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ROWS))])
    return [r["input_ids"] for r in rows.dataset], batch["input_ids"].tolist(), batch["labels"].tolist()


# --- the loss mask -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, tok_name", [("chat", "chat_tok"), ("alpaca", "chat_tok"), ("plain", "chat_tok"),
                                           ("chat", "bare_tok"), ("alpaca", "bare_tok")])
def test_response_only_loss_masks_the_prompt_in_every_format(request, tiny_model, tmp_path, fmt, tok_name):
    tok = request.getfixturevalue(tok_name)
    ids, batch_ids, labels = _collated_labels(tiny_model, tok, fmt, True, tmp_path)
    assert len({len(i) for i in ids}) > 1  # rows of different lengths, so the batch is padded
    for row, row_ids, row_batch, row_labels in zip(ROWS, ids, batch_ids, labels):
        prompt = encode_prompt(tok, build_messages(_task(fmt), row.input, meta=row.meta))
        n, total = len(prompt), len(row_ids)
        assert row_ids[:n] == prompt  # inference feeds exactly the prompt the answer was trained after
        assert row_batch[:total] == row_ids
        assert row_labels[:n] == [-100] * n  # prompt tokens: no loss
        assert row_labels[n:total] == row_ids[n:]  # answer tokens: learnt, end token included
        assert row_labels[total:] == [-100] * (len(row_labels) - total)  # padding: no loss
        answer = tok.decode(row_ids[n:])
        assert answer.strip() == f"{row.target}{tok.eos_token}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_whole_sequence_loss_masks_nothing_but_padding(tiny_model, chat_tok, tmp_path, fmt):
    ids, _, labels = _collated_labels(tiny_model, chat_tok, fmt, False, tmp_path)
    for row_ids, row_labels in zip(ids, labels):
        assert row_labels[:len(row_ids)] == row_ids
        assert row_labels[len(row_ids):] == [-100] * (len(row_labels) - len(row_ids))
    assert any(len(row_labels) > len(row_ids) for row_ids, row_labels in zip(ids, labels))


# --- the rendered text ---------------------------------------------------------------------------------------

def test_alpaca_text_is_the_stanford_template_even_with_a_chat_template(chat_tok):
    messages = build_messages(_task("alpaca", GEN), "The river runs past the old stone bridge.")
    prompt = render(chat_tok, messages, generation_prompt=True)
    assert prompt == ALPACA_WITH_INPUT.format(instruction="Summarize the text in a few words.",
                                              input="The river runs past the old stone bridge.")
    prompt_ids, completion_ids = encode_prompt_completion(chat_tok, messages, "A river and a bridge.")
    # what is trained on: Stanford's source + output + eos
    assert chat_tok.decode(prompt_ids + completion_ids) == prompt + "A river and a bridge." + chat_tok.eos_token


def test_alpaca_row_without_input_uses_the_no_input_variant(chat_tok, tmp_path):
    path = tmp_path / "alpaca.jsonl"
    path.write_text(json.dumps({"instruction": "Name a colour of the sky.", "input": "", "output": "blue"}) + "\n")
    (row,), _ = load_file(path, "alpaca.jsonl", "input", "target", row_format="alpaca")
    prompt = render(chat_tok, build_messages(_task("alpaca", GEN), row.input, meta=row.meta), generation_prompt=True)
    assert prompt == ALPACA_NO_INPUT.format(instruction="Name a colour of the sky.")


def test_plain_template_ignores_the_chat_template(chat_tok):
    prompt = render(chat_tok, build_messages(_task("plain"), "a red stone"), generation_prompt=True)
    assert prompt == ("INSTRUCTION: Which colour word does the text contain?\nAnswer with exactly one of these "
                      "labels: red, green, blue.\n\nINPUT: a red stone\n\nRESPONSE:")


@pytest.mark.parametrize("fmt", FORMATS)
def test_exemplars_work_in_every_format(chat_tok, fmt):
    shots = [Example("s1", "x green", "green"), Example("s2", "y blue", "blue")]
    messages = build_messages(_task(fmt), "z red", shots)
    prompt_ids, completion_ids = encode_prompt_completion(chat_tok, messages, "red")
    assert prompt_ids == encode_prompt(chat_tok, messages)
    text = chat_tok.decode(prompt_ids)
    eos = chat_tok.eos_token
    # each exemplar's answer ends with the end token, in order, and the row's input comes last
    assert text.index(f"green{eos}") < text.index("y blue") < text.index(f"blue{eos}") < text.index("z red")
    assert text.count("Which colour word") == 3
    if fmt == "alpaca":
        assert text.count("Below is an instruction") == 1  # the preamble once, then one block per turn
    assert chat_tok.decode(completion_ids).strip() == f"red{eos}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_rows_own_instruction_replaces_the_task_instruction(chat_tok, fmt):
    row = ROWS[1]
    text = render(chat_tok, build_messages(_task(fmt), row.input, meta=row.meta), generation_prompt=True)
    assert "Name the colour in the text." in text and "Which colour word" not in text
    assert "red, green, blue" in text  # the label list follows whichever instruction is shown


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_conversation_keeps_its_system_text_and_earlier_turns(chat_tok, fmt):
    row = ROWS[2]
    text = render(chat_tok, build_messages(_task(fmt), row.input, meta=row.meta), generation_prompt=True)
    assert text.index("Answer with one word.") < text.index("what colour is the sky?") < text.index(
        f"blue{chat_tok.eos_token}") < text.index("and the stone?")
    assert "Which colour word" not in text  # the user turn is the whole request


def test_unknown_format_is_a_clear_error():
    with pytest.raises(UserError, match="unknown instruction format 'alpacca'.*chat, alpaca, plain"):
        build_messages(_task("alpacca"), "x")


def test_seq2seq_sources_in_each_format():
    assert source_text(_task("alpaca", GEN), "The river runs.") == ALPACA_WITH_INPUT.format(
        instruction="Summarize the text in a few words.", input="The river runs.").rstrip()
    assert source_text(_task("plain", GEN), "The river runs.") == (
        "INSTRUCTION: Summarize the text in a few words.\n\nINPUT: The river runs.\n\nRESPONSE:")
    # chat is the Flan layout; a conversation's system text and earlier turns come before the input
    assert source_text(GEN, "and the stone?", meta=ROWS[2].meta) == (
        "Answer with one word.\n\nInput: what colour is the sky?\nAnswer: blue\n\nInput: and the stone?\nAnswer:")
    few = source_text(_task("alpaca", GEN), "z", [Example("s", "x", "y")])
    assert "### Response:\ny\n\n### Instruction:" in few and "</s>" not in few  # exemplar answers inline, no eos


# --- reading rows that carry their own instruction -----------------------------------------------------------

def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_alpaca_rows_are_read_as_they_are(tmp_path):
    path = _jsonl(tmp_path / "a.jsonl", [
        {"instruction": "Translate to French.", "input": "Hello", "output": "Bonjour"},
        {"instruction": "Name a primary colour.", "input": "", "output": "red"},
        {"instruction": "Name a primary colour.", "output": "blue"},  # no input field at all
    ])
    rows, _ = load_file(path, "a.jsonl", "input", "target", row_format="alpaca")
    assert [(e.input, e.target, e.meta["instruction"]) for e in rows] == [
        ("Hello", "Bonjour", "Translate to French."), ("Name a primary colour.", "red", ""),
        ("Name a primary colour.", "blue", "")]
    assert rows[0].id == "a.jsonl:1" and rows[0].meta["row"] == 1


def test_messages_rows_are_read_as_they_are(tmp_path):
    path = _jsonl(tmp_path / "m.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}, {"role": "user", "content": "sky colour?"},
                      {"role": "assistant", "content": "blue"}]},
        {"messages": [{"role": "user", "content": "grass colour?"}, {"role": "assistant", "content": "green"}]},
    ])
    rows, _ = load_file(path, "m.jsonl", "input", "target", row_format="messages")
    assert [(e.input, e.target) for e in rows] == [("sky colour?", "blue"), ("grass colour?", "green")]
    assert rows[0].meta["system"] == "Be brief." and rows[0].meta["instruction"] == ""
    assert rows[0].meta["history"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert rows[1].meta["history"] == [] and "system" not in rows[1].meta


def _load_error(path: Path, row_format: str) -> str:
    with pytest.raises(DataError) as e:
        load_file(path, path.name, "input", "target", row_format=row_format)
    return str(e.value)


def test_alpaca_row_missing_its_output_names_file_line_and_field(tmp_path):
    path = _jsonl(tmp_path / "a.jsonl", [{"instruction": "i", "input": "x", "output": "y"},
                                         {"instruction": "i", "input": "x", "answer": "y"}])
    msg = _load_error(path, "alpaca")
    assert str(path) in msg and "line 2, field 'output': missing" in msg and "'answer'" in msg
    assert "data.format: alpaca reads the fields 'instruction', 'input'" in msg


@pytest.mark.parametrize("messages, expected", [
    ([{"role": "user", "content": "hi"}], "turn 1: the last turn is a user turn, not the assistant's answer"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}],
     "turn 2: a user turn where a assistant turn belongs (turns must alternate"),
    ([{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}], "turn 2: role 'bot' is not one of"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": " "}], "turn 2: the assistant turn's content"),
    ("not json", "text that is not a JSON list of turns"),
])
def test_bad_conversations_name_line_turn_and_fix(tmp_path, messages, expected):
    path = _jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "ok"},
                                                       {"role": "assistant", "content": "fine"}]},
                                         {"messages": messages}])
    msg = _load_error(path, "messages")
    assert str(path) in msg and "line 2, field 'messages'" in msg and expected in msg
    assert "How to fix:" in msg


def test_a_file_without_the_format_fields_says_which_fields_it_has(tmp_path):
    path = _jsonl(tmp_path / "m.jsonl", [{"input": "a", "target": "b"}] * 3)
    msg = _load_error(path, "messages")
    assert msg.count("no row has a field 'messages'") == 1 and "'input', 'target'" in msg


def test_prepare_reads_alpaca_files_and_needs_no_task_instruction(tmp_path):
    rows = [{"instruction": f"Repeat the word {w}.", "input": f"say {w}", "output": w}
            for w in ("red", "green", "blue") * 6]
    # the same input under two instructions: different requests, neither dropped nor reported as a conflict
    rows += [{"instruction": "Translate to French.", "input": "Hello", "output": "Bonjour"},
             {"instruction": "Translate to Spanish.", "input": "Hello", "output": "Hola"}]
    _jsonl(tmp_path / "train.jsonl", rows)
    _jsonl(tmp_path / "test.jsonl", [{"instruction": "Repeat the word red.", "input": "say it", "output": "red"}])
    prepared = prepare_data(DataConfig(train="train.jsonl", test="test.jsonl", format="alpaca",
                                       validation_fraction=0), "generation", tmp_path)
    assert len(prepared.splits.train) == 20 and not prepared.warnings
    assert prepared.splits.test[0].meta["instruction"] == "Repeat the word red."
    assert "data.format: alpaca" in prepared.task_defaults["instruction"]


def test_hf_dataset_in_messages_form(tmp_path, monkeypatch):
    import datasets

    conv = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(12)]
    data = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"messages": conv[:10]}),
                                 "test": datasets.Dataset.from_dict({"messages": conv[10:]})})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: data)
    prepared = prepare_data(DataConfig(source="hf:someone/chats", format="messages"), "generation", tmp_path)
    assert [(e.id, e.input, e.target) for e in prepared.splits.test] == [
        ("someone/chats/test:1", "q10", "a10"), ("someone/chats/test:2", "q11", "a11")]


@pytest.mark.parametrize("cfg, expected", [
    ({"source": "a.jsonl", "format": "alpaca", "input_field": "q"}, "data.input_field only applies to data.format: "
                                                                    "fields"),
    ({"source": "builtin:pydoc-module", "format": "messages"}, "built-in datasets have their own layout"),
    ({"source": "a.jsonl", "format": "sharegpt"}, "fields', 'alpaca' or 'messages'"),
])
def test_data_format_settings_are_checked(cfg, expected):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=expected):
        DataConfig(**cfg)
