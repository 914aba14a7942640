"""What a model family is to lmtailor: one adapter per family answers every question the code used to answer with
``family == "..."`` tests (how to load, prompt, train, predict, pre-train, probe, export and build a tiny test model).

Adapters are declarations plus the little logic that needs nothing above ``models/``: callers higher up (prompting,
training, the forgetting probe) read them and pick their own implementation, so this layer imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

from lmtailor.models.family import Head, auto_class

Trainer = Literal["sft", "seq2seq", "classifier"]
Predictor = Literal["causal", "seq2seq"]
Perplexity = Literal["causal", "continuation"]


@dataclass(frozen=True)
class TinyArchitecture:
    """A tiny random test model of a family (``models/tiny.py`` builds it): its byte-level BPE tokenizer's special
    tokens and post-processor, its transformers config, and its chat template. Changing one changes the cached
    build: bump ``models/tiny.py``'s ``TINY_VERSION``."""

    name: str  # "llama": the tiny model's name (alias ``tiny-<name>``)
    special_tokens: tuple[str, ...]  # in id order
    token_names: dict[str, Any]  # keyword arguments naming them for ``PreTrainedTokenizerFast``
    post_processor: Callable[[dict[str, int]], Any]  # special token ids -> a ``tokenizers`` post-processor
    config: Callable[[Any], Any]  # tokenizer -> a transformers config
    chat_template: str | None = None


class FamilyAdapter:
    """One model family. Subclasses set the class attributes; the registry holds one instance of each."""

    name: ClassVar[str]  # the family's name, as ``detect_family`` returns it and records store it
    examples: ClassVar[str]  # model types, for messages and docs ("Llama, Qwen, SmolLM, Gemma")
    default_head: ClassVar[Head | None]  # what ``load_model`` loads without a head asked for (None: the bare model)
    # A language-model head: it can be prompted, retrieve-and-answer, teach, paraphrase, be served. An encoder's
    # masked-LM head is not one lmtailor generates with.
    generates_text: ClassVar[bool]
    # The prompt is an encoder's source (Flan-style text, no chat template, ``prompting/seq2seq_format.py``) and the answer
    # the decoder's own sequence, ended by eos; otherwise a decoder continues its chat-templated prompt.
    seq2seq: ClassVar[bool]
    trains_with: ClassVar[Trainer]  # fine-tuning: TRL SFT, Seq2SeqTrainer, or a classification head
    # Fine-tuning puts a freshly initialised task head on the model (an encoder's classifier): it trains in full
    # beside any method (PEFT ``modules_to_save``, freeze), at the method's encoder learning rate.
    fresh_head: ClassVar[bool]
    peft_task_type: ClassVar[str]  # PEFT's ``task_type`` for this family's fine-tuned model ("CAUSAL_LM", ...)
    predicts_with: ClassVar[Predictor | None]  # prompted inference; None: cannot be prompted
    pretrain_objectives: ClassVar[tuple[str, ...]]  # continued pre-training / scratch; () = not implemented
    padding_free: ClassVar[bool]  # training batches may be flattened into one sequence
    freeze_stack: ClassVar[str | None]  # freeze tuning counts layers from this stack ("decoder"); None: the largest
    perplexity: ClassVar[Perplexity | None]  # the forgetting probe's perplexity; None: no distribution over text
    perplexity_kind: ClassVar[str | None]  # how that perplexity is named in the record
    no_probe_reason: ClassVar[str | None]  # why the forgetting probe has no numbers for this family
    gguf: ClassVar[bool]  # lmtailor writes its GGUF and runs it in llama.cpp
    tiny_architectures: ClassVar[tuple[TinyArchitecture, ...]]  # tiny random test models of this family

    def head(self, head: Head | None = None) -> Head | None:
        """The head to load: the one asked for, or the family's default (None = the bare model)."""
        return self.default_head if head is None else head

    def auto_class(self, head: Head | None = None):
        """The transformers auto class that loads this family's model with ``head`` (default: the family's)."""
        return auto_class(self.head(head))

    @property
    def with_article(self) -> str:
        """The family's name with its article, for messages: "an encoder", "a decoder-only"."""
        return f"{'an' if self.name[:1] in 'aeiou' else 'a'} {self.name}"

    def __repr__(self) -> str:
        return f"<model family {self.name}>"
