"""Retrieval-augmented generation: the ``prompt`` rung with the top-k passages of a corpus above each test input.

The index is built (or found in the cache) in the meter's ``index`` phase; retrieval of every test input happens in
the ``inference`` phase, where it is paid for at serving time. Passages are numbered and fitted into
``max_context_tokens`` of the generator's tokens (cuts and drops are reported), then the augmented rows go through
the same prediction code as ``prompt`` (label likelihood, constrained or free generation; both model families).
With ``corpus: task:train`` the retrieved training rows are shown as worked examples instead of passages.
``shots`` with ``exemplars: similar`` pick each row's exemplars by its own input (not its passages), with the
corpus's embedder; ``calibrate`` measures the label prior on content-free inputs in place of the whole augmented
input (passages and row).

What may be in the corpus (``corpus_documents``, the same for the pre-training rungs):

- ``task:train`` builds it from the training split only, one document per row (input and answer). It is retrieved
  as whole rows and shown as worked examples, input then answer, in the layout of the k-shot exemplars
  (``retrieval/worked_examples.py``): never chunked, never numbered passages.
- Documents a test row was *made from* (``meta["source_doc"]``: pydoc-summary and pydoc-module rows, whose target
  is part of that document) are left out, since retrieving them would copy the answer. A ``meta["gold_doc"]``
  (pydoc-qa) is different: it is the knowledge the question is about, which a retrieval system is meant to find,
  and finding it is scored (recall@k, MRR).
- Any document whose normalised text contains a row's input or shows its answer is left out too, whatever its id
  (``retrieval/exclusion.py``): a twin of a source document, a copy of a test row under another name.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from lmtailor.core.context import RunContext
from lmtailor.core.example import Example
from lmtailor.core.strategy_output import StrategyOutput
from lmtailor.data.leakage import normalize_text
from lmtailor.errors import UserError
from lmtailor.inference.answer import answer
from lmtailor.inference.backends import check_backend_name, open_predictor
from lmtailor.inference.backends.base import PredictRequest
from lmtailor.inference.context_limit import input_limit
from lmtailor.measure.setup_cost import SetupCost
from lmtailor.prompting.formats import truncate_text
from lmtailor.retrieval import CorpusError, Document, Embedder, chunk_documents, load_corpus, make_retriever
from lmtailor.retrieval.context import assemble_context, with_passages
from lmtailor.retrieval.exclusion import describe_exclusions, exclude_held_out
from lmtailor.retrieval.worked_examples import fit_worked_examples, row_chunks, with_worked_examples
from lmtailor.strategies.base import Strategy, StrategyConfig
from lmtailor.strategies.prompt import ExemplarChooser, check_prompt_knobs, prompt_label
from lmtailor.strategies.traits import StrategyTraits

TASK_CORPUS = "task:train"


class RagConfig(StrategyConfig):
    """Knobs of a retrieval-augmented run."""

    name: Literal["rag"] = Field(description="registered strategy name")
    corpus: str = Field("builtin:pydoc", description="a folder of .txt/.md/.html files, a .jsonl file, "
                        "builtin:pydoc, or task:train (the training rows, retrieved whole and shown as worked "
                        "examples; never a test row)")
    text_field: str = Field("text", description="JSONL corpus: the field holding a document's text")
    id_field: str | None = Field(None, description="JSONL corpus: the field holding a document's id "
                                 "(default: file:line)")
    retriever: Literal["dense", "bm25", "hybrid"] = Field(
        "dense", description="dense (embeddings, FAISS), bm25 (words) or hybrid (both, reciprocal rank fusion)")
    k: int = Field(3, ge=1, description="passages retrieved per test input")
    embedder: str = Field("minilm-l6", description="sentence-transformers model (alias, directory or hub id); "
                          "chunks are measured in its tokens for every retriever")
    chunk_tokens: int = Field(128, ge=8, description="chunk length in embedder tokens (not for task:train: a "
                              "training row is never chunked)")
    chunk_overlap: int = Field(32, ge=0, description="tokens shared by consecutive chunks of a document")
    max_context_tokens: int = Field(384, ge=16, description="budget for the passages block, in the generator's "
                                    "tokens; passages past it are cut or dropped (and counted)")
    shots: int = Field(0, ge=0, description="solved training rows shown before the test row (without passages)")
    exemplars: Literal["random", "similar"] = Field(
        "random", description="as for prompt: random (drawn with the seed) or similar (each test row's nearest "
                              "training rows by the embedder)")
    calibrate: bool = Field(False, description="as for prompt: contextual calibration of the label scores against "
                                               "content-free inputs (classification scored by likelihood)")
    scoring: Literal["likelihood", "constrained", "generate"] | None = Field(
        None, description="as for prompt: default likelihood for classification (constrained for an "
                          "openai: API model), generate otherwise")
    backend: str | None = Field(
        None, description="as for prompt: transformers, llamacpp (the generator's GGUF file in llama.cpp; "
                          "decoder-only models; needs the llamacpp extra) or openai; default: from the model "
                          "reference")

    _backend_known = field_validator("backend")(check_backend_name)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> "RagConfig":
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_tokens "
                             f"({self.chunk_tokens})")
        check_prompt_knobs(self.shots, self.exemplars, self.calibrate, self.scoring)
        return self


def task_documents(train: list[Example], test: list[Example]) -> list:
    """The ``task:train`` corpus: one document per training row (input and answer), none sharing a test input."""
    test_inputs = {normalize_text(e.input) for e in test}
    test_ids = {e.id for e in test}
    docs = [Document(e.id, f"{e.input}\nAnswer: {e.target}", {"split": "train"})
            for e in train if normalize_text(e.input) not in test_inputs]
    leaked = test_ids & {d.id for d in docs}
    if leaked:
        raise RuntimeError(f"training rows {sorted(leaked)[:5]} share ids with test rows; the splits must not")
    if not docs:
        raise UserError("corpus task:train is empty: every training row's input is also a test input")
    return docs


def corpus_documents(ctx: RunContext, corpus: str, text_field: str, id_field: str | None,
                     label: str) -> tuple[list, dict]:
    """A strategy's corpus without what the rows it predicts could leak, and the record of what was left out.

    ``task:train`` holds training rows only; any other corpus leaves out the documents those rows were made from
    (``meta["source_doc"]``); every corpus leaves out documents showing their content (``retrieval/exclusion.py``).
    """
    if corpus == TASK_CORPUS:
        docs, sources = task_documents(ctx.data.train, ctx.data.test), set()
    elif corpus.startswith("task:"):
        raise UserError(f"corpus {corpus!r}: the only corpus made from the task's data is {TASK_CORPUS} "
                        "(the training rows); the test rows are never in a corpus")
    else:
        docs = load_corpus(corpus, ctx.base_dir, text_field, id_field)
        sources = {e.meta["source_doc"] for e in ctx.data.test if e.meta.get("source_doc")}
    kept, record = exclude_held_out(docs, ctx.data.test, ctx.task.type, sources)
    ctx.log.info("%s: corpus %s: %s", label, corpus, describe_exclusions(record))
    if not kept:
        raise CorpusError(f"corpus {corpus}: no documents left after leaving out the {len(docs)} that show the "
                          "rows to predict; use a corpus that is not made of the task's own rows")
    return kept, {"source": corpus, **record}


class RagStrategy(Strategy):
    """Retrieve top-k chunks per test input and prompt a generative model with them."""

    Config = RagConfig
    config: RagConfig
    TRAITS = StrategyTraits(place="retrieval", use="prompted", rung="rag", data=("corpus",))

    def traits(self) -> StrategyTraits:
        shots = self.config.shots
        return replace(self.TRAITS, data=("corpus", "exemplars"), exemplars=shots) if shots else self.TRAITS

    def default_label(self) -> str:
        cfg = self.config
        shots = f", {prompt_label(cfg.shots, cfg.exemplars, False)}" if cfg.shots else ""
        return f"RAG {cfg.retriever} k={cfg.k}{shots}" + (", calibrated" if cfg.calibrate else "")

    def uses_seed(self) -> bool:
        return self.config.shots > 0 and self.config.exemplars == "random"

    def _worked_examples(self) -> bool:
        """Whether the corpus is the training rows, retrieved whole and shown as worked examples."""
        return self.config.corpus == TASK_CORPUS

    def _build(self, ctx: RunContext):
        """Load the corpus, chunk it, build the retriever; returns (retriever, embedder, details, exclusions)."""
        cfg = self.config
        t0 = time.perf_counter()
        docs, exclusions = corpus_documents(ctx, cfg.corpus, cfg.text_field, cfg.id_field, self.label())
        embedder = Embedder(cfg.embedder)
        if self._worked_examples():  # one chunk per training row: never cut apart from its answer
            chunks = row_chunks(docs, ctx.data.train)
            params = {"chunks": "training-row inputs"}
        else:
            # +2: the [CLS]/[SEP] the embedder adds; longer chunks would lose their tail silently.
            if cfg.chunk_tokens + 2 > embedder.max_seq_length:
                raise UserError(f"chunk_tokens={cfg.chunk_tokens} does not fit the embedder {cfg.embedder!r}, which "
                                f"reads {embedder.max_seq_length} tokens; set chunk_tokens to at most "
                                f"{embedder.max_seq_length - 2}")
            chunks = chunk_documents(docs, embedder.tokenizer, cfg.chunk_tokens, cfg.chunk_overlap)
            params = {"chunk_tokens": cfg.chunk_tokens, "chunk_overlap": cfg.chunk_overlap}
        chunk_s = time.perf_counter() - t0
        options = {} if cfg.retriever == "bm25" else {"embedder": embedder, "params": params}
        retriever = make_retriever(cfg.retriever, chunks, **options)
        details = {"corpus": cfg.corpus, "documents": len(docs), "chunks": len(chunks),
                   "load_and_chunk_s": round(chunk_s, 3), "build": retriever.build_stats}
        shape = "one per training row" if self._worked_examples() else f"of ≤{cfg.chunk_tokens} tokens"
        ctx.log.info("%s: %d documents, %d chunks %s; index %s", self.label(), len(docs), len(chunks), shape,
                     _describe_build(retriever.build_stats))
        _charge_reused_embedding(ctx, retriever.build_stats)
        return retriever, embedder, details, exclusions

    def accepts_api_models(self) -> bool:
        return True

    def run(self, ctx: RunContext) -> StrategyOutput:
        cfg = self.config
        chooser = ExemplarChooser(ctx, cfg.shots, cfg.exemplars, cfg.embedder, self.label())
        with ctx.meter.phase("index"):
            retriever, embedder, index_details, exclusions = self._build(ctx)
            chooser.set_up(embedder)  # exemplars: similar: the training pool, embedded by the same embedder
        with ctx.meter.phase("load"):  # the model that reads the passages
            predictor = open_predictor(ctx.model_ref, cfg.backend, ctx)
        try:
            out = self._run_with(ctx, retriever, embedder, index_details, predictor, chooser)
            out.details["corpus_exclusions"] = exclusions
            return out
        finally:
            predictor.close()  # free e.g. llama.cpp's weights and context now, not at garbage collection

    def _run_with(self, ctx: RunContext, retriever, embedder, index_details: dict, predictor,
                  chooser: ExemplarChooser) -> StrategyOutput:
        cfg = self.config
        n_params = predictor.n_params  # None: an endpoint's, not known here
        if n_params is not None and (cfg.retriever != "bm25" or chooser.index is not None):
            n_params += sum(p.numel() for p in embedder.model.parameters())  # the embedder serves every query too
        if n_params is not None:
            ctx.meter.set_params(0, n_params)
        # An endpoint's tokenizer is not known here: its passages are measured in the embedder's tokens instead.
        tokenizer = embedder.tokenizer if predictor.tokenizer is None else predictor.tokenizer
        context_budget = self._context_budget(ctx, predictor)
        task = ctx.task if self._worked_examples() else replace(
            ctx.task, instruction=ctx.task.instruction.rstrip() + " Use the numbered passages if they help.")
        with ctx.meter.phase("inference"):
            exemplars = chooser.choose()  # similar: nearest to the test input itself, not to its passages
            t0 = time.perf_counter()
            hits = retriever.retrieve([e.input for e in ctx.data.test], cfg.k)
            retrieval_s = time.perf_counter() - t0
            if self._worked_examples():
                rows, contexts, cut_inputs = self._with_examples(ctx, tokenizer, hits, context_budget)
            else:
                rows, contexts, cut_inputs = self._augment(ctx, tokenizer, hits, context_budget,
                                                           assemble_context, with_passages)
            # the predictor cuts inputs to max_input_tokens: widen it so the passages, already fitted, are not cut
            longest = max((predictor.count_tokens(r.input) for r in rows), default=0)
            wide = replace(ctx.budget, max_input_tokens=max(ctx.budget.max_input_tokens, longest + 1))
            request = PredictRequest(task, rows, wide, exemplars, cfg.scoring, calibrate=cfg.calibrate,
                                     progress_desc=f"{self.label()} {ctx.model_ref}")
            predictions, inference = answer(predictor, request, ctx.meter)
        retrieved = [[h.chunk.doc_id for h in row_hits] for row_hits in hits]
        if self._worked_examples():  # the worked examples' inputs were cut like any exemplar's: count them there
            inference["truncated_exemplar_inputs"] = (inference.get("truncated_exemplar_inputs") or 0) + sum(
                c.cut_inputs for c in contexts)
        details = {
            "retriever": cfg.retriever, "k": cfg.k, "embedder": cfg.embedder if cfg.retriever != "bm25" else None,
            "index": index_details, "retrieval_s": round(retrieval_s, 3),
            "retrieval_ms_per_query": round(1000 * retrieval_s / max(1, len(hits)), 2),
            "context": self._context_details(contexts, context_budget, predictor.tokenizer is None),
            "retrieved_doc_ids": dict(zip((e.id for e in ctx.data.test), retrieved)),
            "shots": cfg.shots, **chooser.details(exemplars), "calibrate": cfg.calibrate, "scoring": inference["mode"],
            "truncated_inputs": cut_inputs, "inference": inference, "backend": predictor.name,
            **predictor.describe(),
        }
        if details["context"]["rows_with_cut_or_dropped"]:
            what = "worked examples" if self._worked_examples() else "passages"
            ctx.log.info("%s: %s cut or dropped to fit %d tokens in %d of %d rows (%d cut, %d dropped)",
                         self.label(), what, context_budget, details["context"]["rows_with_cut_or_dropped"],
                         len(rows), details["context"]["passages_cut"], details["context"]["passages_dropped"])
        return StrategyOutput(predictions=predictions, details=details, retrieved_doc_ids=retrieved,
                              retrieval_k=cfg.k)

    def _context_budget(self, ctx: RunContext, predictor) -> int:
        """``max_context_tokens``, lowered when a local model cannot read that much beside the row and its answer."""
        cfg, budget = self.config, ctx.budget
        limit = predictor.input_limit  # a llama.cpp context holds passages, row, instruction and answer
        if limit is None:
            return cfg.max_context_tokens
        # What the model can read: its positions minus the row, the instruction and (decoder-only) the answer.
        room = limit - budget.max_input_tokens - 64 - (budget.max_new_tokens if predictor.answer_in_context else 0)
        if room >= cfg.max_context_tokens:
            return cfg.max_context_tokens
        if room < 16:
            raise UserError(f"{ctx.model_ref} reads {limit} tokens, which leaves no room for passages beside "
                            f"budget.max_input_tokens={budget.max_input_tokens}; lower it")
        ctx.log.warning("%s: %s reads %d tokens: passages budget lowered from %d to %d", self.label(),
                        ctx.model_ref, limit, cfg.max_context_tokens, room)
        return room

    def _augment(self, ctx: RunContext, tokenizer, hits, context_budget: int, assemble, with_passages):
        rows, contexts, cut_inputs = [], [], 0
        name = "Question" if ctx.task.type == "qa" else "Input"
        for row, row_hits in zip(ctx.data.test, hits):
            context = assemble(row_hits, tokenizer, context_budget)
            # The row is cut to its own budget first, so a long input cannot push its passages out.
            text, cut = truncate_text(tokenizer, row.input, ctx.budget.max_input_tokens)
            cut_inputs += cut
            rows.append(Example(row.id, with_passages(context, text, name), row.target, row.meta))
            contexts.append(context)
        return rows, contexts, cut_inputs


    def _with_examples(self, ctx: RunContext, tokenizer, hits, context_budget: int):
        """Each test row with the training rows retrieved for it as its own worked examples (whole rows)."""
        train = {e.id: e for e in ctx.data.train}
        rows, contexts, cut_inputs = [], [], 0
        for row, row_hits in zip(ctx.data.test, hits):
            worked = fit_worked_examples(row_hits, train, tokenizer, context_budget, ctx.budget.max_input_tokens)
            # cut here, as _augment does, so that the budget predict() is given (widened to the longest row) cuts
            # nothing more
            text, cut = truncate_text(tokenizer, row.input, ctx.budget.max_input_tokens)
            cut_inputs += cut
            rows.append(with_worked_examples(Example(row.id, text, row.target, row.meta), worked))
            contexts.append(worked)
        return rows, contexts, cut_inputs

    def _context_details(self, contexts: list, budget: int, embedder_tokens: bool) -> dict:
        """What fitting retrieved text into the budget cost: passages (or worked examples) cut and dropped."""
        cut = [getattr(c, "cut", 0) for c in contexts]  # worked examples are never cut apart from their answers
        details = {"budget_tokens": budget, "mean_tokens": _mean([c.tokens for c in contexts]),
                   "passages_cut": sum(cut), "passages_dropped": sum(c.dropped for c in contexts),
                   "rows_with_cut_or_dropped": sum(bool(n or c.dropped) for n, c in zip(cut, contexts)),
                   "tokens_of": "embedder" if embedder_tokens else "generator",
                   "shown_as": "worked examples" if self._worked_examples() else "numbered passages"}
        if self._worked_examples():
            details["mean_worked_examples"] = _mean([len(c.examples) for c in contexts])
        return details


def _mean(values: list[int]) -> float:
    return round(sum(values) / len(values), 1) if values else 0.0


def _charge_reused_embedding(ctx: RunContext, stats: dict) -> None:
    """Charge the row the embedding its dense index reused (a cached index, or stored vectors) at what it cost when
    it was done, so only the first RAG row of a run does not look dearer than the others (``Meter.charge_cached``)."""
    dense = stats.get("dense", stats)
    if "reused_index" not in dense:  # BM25 only: built in memory every time, nothing reused
        return
    source = f"dense index {Path(dense['index_path']).name}" + (" (reused)" if dense["reused_index"] else
                                                               " (stored vectors)")
    if dense.get("charged_unknown"):
        ctx.meter.charge_cached(None, source=f"{source}: {dense['charged_unknown']} vectors stored before their "
                                             "cost was kept", phase="index")
    if dense.get("charged_embed_s") or dense.get("charged_embed_cpu_s"):
        ctx.meter.charge_cached(SetupCost("index", dense["charged_embed_s"], dense["charged_embed_cpu_s"],
                                          hardware=ctx.meter.hardware), source=source)


def _describe_build(stats: dict) -> str:
    dense = stats.get("dense", stats)
    if "reused_index" not in dense:
        return f"built in {stats['build_s']:.2f}s (BM25, in memory)"
    if dense["reused_index"]:
        return f"reused from the cache ({dense['index_path']}; nothing embedded)"
    return (f"built ({dense['embedded']} chunks embedded, {dense['reused']} vectors reused, "
            f"{dense['embed_s']:.1f}s embedding)")
