"""Static sentence embeddings for stage 1: meaning, not spelling, at tens of thousands of posts/s.

The byte n-gram model learns the surface of its sources: held out, a source it never saw looks
safe to it (`data/MODEL_CARD.md`). A sentence embedding puts "I will shoot up the school" near
"going to kill everyone at work" whatever the wording, so a head trained on it carries across
sources. The embedding is WordLlama's `l2_supercat_256` (MIT licence): a 32,000 x 256 table of
token vectors distilled from the Llama 2 family's token embeddings, averaged over the tokens of
the text. The table and its tokenizer ship inside the `wordllama` wheel on PyPI, so nothing is
downloaded at run time; they are read straight from the installed package's files (the package
itself is not imported: its import configures the root logger, and inference needs no more than
a table lookup). The files are checked against the digests pinned here.

Chosen by measurement against MiniLM-L6 (torch), MiniLM on onnxruntime and a model2vec
distillation of MiniLM (`data/MODEL_CARD.md`, "Semantic features"): the only candidate that
ships ready weights without torch and keeps stage 1 above 20,000 posts/s per core.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp  # type: ignore[import-untyped]

EMBEDDER_PACKAGE = "wordllama==0.4.0.post1"
EMBEDDER_NAME = "wordllama-l2-supercat-256"
_WEIGHTS = ("weights", "l2_supercat_256.safetensors")
_TOKENIZER = ("tokenizers", "l2_supercat_tokenizer_config.json")
_DIGESTS = {
    "l2_supercat_256.safetensors": (
        "64b47a2dc493cb8e85944076601189739852d7b64e0e1eedcb1937a251cd9fd5"
    ),
    "l2_supercat_tokenizer_config.json": (
        "93248f2a9ec36c7b35f700a033d5f36228aae48db61aee31007fa49062cdeb68"
    ),
}
# Texts longer than this are embedded from their head and tail (half each): the mean of a whole
# e-mail drowns one violent sentence anyway, and tokenizing it all would cost as much as the rest
# of stage 1. The n-gram model still reads every byte.
EMBED_CHARS = 2_000


class EmbedderUnavailable(RuntimeError):
    """The embedding files are not installed or do not match their pinned digests."""


def _package_dir() -> Path:
    spec = importlib.util.find_spec("wordllama")
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderUnavailable(f"the embedding needs {EMBEDDER_PACKAGE} installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _clip(text: str) -> str:
    if len(text) <= EMBED_CHARS:
        return text
    half = EMBED_CHARS // 2
    return f"{text[:half]} {text[-half:]}"


@dataclass(frozen=True)
class StaticEmbedder:
    """Unit-norm mean of the token vectors of each text: `embed(texts)` is (n, dim) float32."""

    table: npt.NDArray[np.float32]
    tokenizer: Any
    digest: str

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # encode_batch_fast skips the character offsets nobody here reads (about 40 % faster).
        encodings = self.tokenizer.encode_batch_fast(
            [_clip(text) for text in texts], add_special_tokens=False
        )
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(texts))
        indptr = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        ids = np.fromiter(
            (token for e in encodings for token in e.ids), dtype=np.int64, count=int(indptr[-1])
        )
        # The mean of the token vectors as one sparse product (rows of 1/length).
        weights = np.repeat(1.0 / np.maximum(lengths, 1), lengths).astype(np.float32)
        bag = sp.csr_matrix((weights, ids, indptr), shape=(len(texts), self.table.shape[0]))
        vectors = np.asarray(bag @ self.table, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return cast(npt.NDArray[np.float32], vectors / np.maximum(norms, 1e-9))


def _checked_digest(path: Path) -> str:
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as error:
        raise EmbedderUnavailable(f"cannot read {path}: {error}") from None
    if digest != _DIGESTS[path.name]:
        raise EmbedderUnavailable(
            f"{path} has sha256 {digest}, not the one pinned for {EMBEDDER_PACKAGE}"
        )
    return digest


@cache
def load_embedder() -> StaticEmbedder:
    """The pinned static embedding, read once per process from the installed package."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    package = _package_dir()
    weights_path = package.joinpath(*_WEIGHTS)
    tokenizer_path = package.joinpath(*_TOKENIZER)
    digests = [_checked_digest(path) for path in (weights_path, tokenizer_path)]
    table = load_file(str(weights_path))["embedding.weight"].astype(np.float32)
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return StaticEmbedder(table=np.ascontiguousarray(table), tokenizer=tokenizer, digest=digests[0])
