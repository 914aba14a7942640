"""Training rows made from training rows: rule-based (EDA), model-based (paraphrase, back-translation) and written by
a teacher model (synthetic). Above inference: they load models and generate."""
