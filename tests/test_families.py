"""Model families as a registry: every adapter answers every question, a new family is one module and one registry
line, and no code outside the adapters compares family names."""

from __future__ import annotations

import ast
import typing
from contextlib import contextmanager
from pathlib import Path

import pytest

from lmtailor.models.families import FAMILIES, FamilyAdapter, family_of, tiny_architectures
from lmtailor.models.families.base import TinyArchitecture
from lmtailor.models.families.decoder_only import TINY_LLAMA, DecoderOnly
from lmtailor.models.family import detect_family
from lmtailor.registry import UnknownNameError

SRC = Path(__file__).resolve().parents[1] / "src" / "lmtailor"

# What each family answers, written out by hand from docs/ARCHITECTURE.md's "Architectures" table: the head and
# auto class it loads with, and the trainer, predictor, probe and GGUF support the code routes by.
EXPECTED = {
    "decoder-only": dict(default_head="causal-lm", auto="AutoModelForCausalLM", generates_text=True, seq2seq=False,
                         trains_with="sft", fresh_head=False, peft_task_type="CAUSAL_LM", predicts_with="causal",
                         perplexity="causal", gguf=True, padding_free=True, pretrain_objectives=("causal-lm",),
                         tiny=("llama",)),
    "encoder-decoder": dict(default_head="seq2seq-lm", auto="AutoModelForSeq2SeqLM", generates_text=True, seq2seq=True,
                            trains_with="seq2seq", fresh_head=False, peft_task_type="SEQ_2_SEQ_LM",
                            predicts_with="seq2seq", perplexity="continuation", gguf=False,
                            padding_free=False, pretrain_objectives=("span-corruption", "text-infilling"),
                            tiny=("t5", "bart")),
    "encoder": dict(default_head=None, auto="AutoModel", generates_text=False, seq2seq=False, trains_with="classifier",
                    fresh_head=True, peft_task_type="SEQ_CLS", predicts_with=None, perplexity=None, gguf=False,
                    padding_free=False, pretrain_objectives=(), tiny=("bert",)),
}


def test_the_registered_families_are_the_three_architectures():
    assert FAMILIES.names() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_adapter_declares_every_answer_with_an_allowed_value(name):
    adapter = family_of(name)
    assert isinstance(adapter, FamilyAdapter) and adapter.name == name and family_of(adapter) is adapter
    hints = typing.get_type_hints(FamilyAdapter, include_extras=False)
    for attr, hint in hints.items():
        assert hasattr(adapter, attr), f"{name} does not declare {attr}"
        value = getattr(adapter, attr)
        inner = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.ClassVar else hint
        allowed = [a for arg in typing.get_args(inner) or (inner,) for a in (typing.get_args(arg) or (arg,))]
        if all(isinstance(a, str) or a is type(None) for a in allowed):  # a Literal (or Literal | None)
            assert value in [None if a is type(None) else a for a in allowed], (attr, value)
    want = EXPECTED[name]
    assert adapter.default_head == want["default_head"] and adapter.head() == want["default_head"]
    assert adapter.head("sequence-classification") == "sequence-classification"  # an explicit head wins
    assert adapter.auto_class().__name__ == want["auto"]
    assert adapter.auto_class("sequence-classification").__name__ == "AutoModelForSequenceClassification"
    for attr in ("generates_text", "seq2seq", "trains_with", "fresh_head", "peft_task_type", "predicts_with",
                 "perplexity", "gguf", "padding_free", "pretrain_objectives"):
        assert getattr(adapter, attr) == want[attr], attr
    # a family that cannot be prompted has nothing to probe, and says why; one with a LM head has a perplexity
    assert (adapter.no_probe_reason is None) == adapter.generates_text == (adapter.perplexity is not None)
    assert (adapter.perplexity_kind is None) == (adapter.perplexity is None)
    assert tuple(a.name for a in adapter.tiny_architectures) == want["tiny"]


@pytest.mark.parametrize("arch", sorted(tiny_architectures()))
def test_each_tiny_architecture_is_detected_as_the_family_that_lists_it(arch):
    from lmtailor.models.tiny import build_tiny_tokenizer

    adapter, spec = tiny_architectures()[arch]
    assert detect_family(spec.config(build_tiny_tokenizer(arch))) == adapter.name


def test_an_unknown_family_suggests_the_nearest():
    with pytest.raises(UnknownNameError, match="Did you mean 'decoder-only'"):
        family_of("decoder-onyl")


class ToyFamily(DecoderOnly):
    """A fourth family for the test: decoder-only in everything but its name, its tiny model and its probe."""

    name = "toy-family"
    no_probe_reason = "toy family: nothing to probe"
    tiny_architectures = (TinyArchitecture("toy-llama", TINY_LLAMA.special_tokens, TINY_LLAMA.token_names,
                                           TINY_LLAMA.post_processor, TINY_LLAMA.config, TINY_LLAMA.chat_template),)


@contextmanager
def toy_family_registered():
    """Register the toy family the way a new family module would (one registry line), and remove it afterwards."""
    FAMILIES.register(ToyFamily.name, ToyFamily())
    try:
        yield
    finally:
        FAMILIES.unregister(ToyFamily.name)


def test_a_fourth_family_is_one_module_and_one_registry_line():
    from lmtailor.probing import forgetting
    from lmtailor.models.tiny import build_tiny_tokenizer

    with toy_family_registered():
        toy = family_of("toy-family")
        assert isinstance(toy, ToyFamily) and "toy-family" in FAMILIES.names()
        # code that routes by family finds it: the forgetting probe reads its reason, tiny models build its model
        probed = forgetting.probe(None, None, "toy-family")
        assert probed["perplexity"] is None and probed["perplexity_note"] == "toy family: nothing to probe"
        tokenizer = build_tiny_tokenizer("toy-llama")
        assert tokenizer.chat_template == TINY_LLAMA.chat_template and tiny_architectures()["toy-llama"][0] is toy
    with pytest.raises(UnknownNameError):  # gone again: no other test sees it
        family_of("toy-family")
    assert "toy-llama" not in tiny_architectures()


def test_training_reads_a_new_family_from_its_adapter(monkeypatch):
    from lmtailor.errors import UserError
    from lmtailor.training.method_settings import LoraSettings
    from lmtailor.training.peft_methods import check_method, finetune_method

    lora = LoraSettings(name="lora")
    with toy_family_registered():
        check_method(lora, "toy-family", padding_free=True)  # its adapter says batches may be flattened
        assert finetune_method("lora").default_learning_rate("toy-family") == 2e-4  # LoRA's rate: no fresh head
        monkeypatch.setattr(ToyFamily, "fresh_head", True)
        assert finetune_method("lora").default_learning_rate("toy-family") == 5e-4  # LoRA's rate beside a new head
        monkeypatch.setattr(ToyFamily, "padding_free", False)
        with pytest.raises(UserError, match="padding_free applies to decoder-only models only; this model is toy"):
            check_method(lora, "toy-family", padding_free=True)


# Where family names are the subject, not a branch: the adapters themselves and detection from the config.
ADAPTERS = ("models/families/", "models/family.py")


def _familyish(node: ast.AST) -> bool:
    """A family name in code: a variable or attribute called ``*family``, or a family's name as a string."""
    if isinstance(node, ast.Name):
        return node.id.endswith("family")
    if isinstance(node, ast.Attribute):
        return node.attr.endswith("family")
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_familyish(e) for e in node.elts)
    return isinstance(node, ast.Constant) and node.value in EXPECTED


def family_checks(tree: ast.AST) -> list[int]:
    """Lines that compare a family name (``==``, ``!=``, ``in``, ``not in``) or read ``is_encoder_decoder``;
    membership in the ``FAMILIES`` registry itself is not a comparison of names."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            registry = any(isinstance(o, ast.Name) and o.id == "FAMILIES" for o in operands)
            ops = all(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops)
            if ops and not registry and any(_familyish(o) for o in operands):
                lines.append(node.lineno)
        elif isinstance(node, ast.Attribute) and node.attr == "is_encoder_decoder":
            lines.append(node.lineno)
        elif isinstance(node, ast.Constant) and node.value == "is_encoder_decoder":  # getattr(config, "...")
            lines.append(node.lineno)
    return sorted(set(lines))


def test_the_check_finder_sees_each_spelling():
    code = ('a = family == "encoder"\nb = loaded.family != x\nc = f(r) in ("decoder-only", "t5")\n'
            'd = getattr(m.config, "is_encoder_decoder", False)\ne = m.config.is_encoder_decoder\n'
            'f = family in FAMILIES\ng = model_type == "t5"\nh = adapter.seq2seq\n')
    assert family_checks(ast.parse(code)) == [1, 2, 3, 4, 5]  # f: registry membership; g, h: no family name


def test_no_family_comparison_outside_the_adapters():
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(ADAPTERS):
            continue
        lines = family_checks(ast.parse(path.read_text(encoding="utf-8")))
        if lines:
            found[rel] = lines
    assert not found, f"ask the family adapter (lmtailor.models.families) instead: {found}"
