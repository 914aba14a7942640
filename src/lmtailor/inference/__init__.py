"""Answering test rows: label likelihood (with a shared-prefix KV cache), label-constrained greedy decoding, and
free greedy generation, through any registered backend (``inference/backends``).

    from lmtailor.inference.predict import predict
    predictions, details = predict(model, tokenizer, task, rows, exemplars, budget, meter)

Names are imported on first use, so that importing a light submodule (``inference.backends``, ``inference.modes``)
does not import torch. ``predict`` is not among them: ``lmtailor.inference.predict`` is its module.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"Generated": "generation", "LabelTrie": "generation", "generate_ids": "generation",
          "LabelScores": "label_scoring", "naive_label_scores": "label_scoring", "score_labels": "label_scoring",
          "MODES": "modes", "Mode": "modes", "default_mode": "modes"}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
