"""Answering test rows with a causal LM: label likelihood (with a shared-prefix KV cache), label-constrained
greedy decoding, and free greedy generation.

    from lmtailor.inference import predict
    predictions, details = predict(model, tokenizer, task, rows, exemplars, budget, meter)
"""

from lmtailor.inference.generation import Generated, LabelTrie, generate_ids
from lmtailor.inference.label_scoring import LabelScores, naive_label_scores, score_labels
from lmtailor.inference.predict import MODES, Mode, default_mode, predict

__all__ = ["MODES", "Generated", "LabelScores", "LabelTrie", "Mode", "default_mode", "generate_ids",
           "naive_label_scores", "predict", "score_labels"]
