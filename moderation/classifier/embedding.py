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

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp  # type: ignore[import-untyped]

from moderation.classifier.pinned_files import checked_digest, package_dir, pinned_definition

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


def definition() -> str:
    """What the vectors depend on: the pinned files, the pooling and the clipping."""
    pinned = pinned_definition(EMBEDDER_NAME, _DIGESTS)
    return f"{pinned};mean-pool,unit-norm;clip={EMBED_CHARS};strip-spaces"


def _package_dir() -> Path:
    return package_dir("wordllama", EMBEDDER_PACKAGE, EmbedderUnavailable)


def _clip(text: str) -> str:
    if len(text) <= EMBED_CHARS:
        return text
    half = EMBED_CHARS // 2
    return f"{text[:half]} {text[-half:]}"


# The tokenizer (Llama 2's SentencePiece BPE) never merges across a space: each space-led word
# is tokenized alone, as the normalizer would see it with its leading space. So word pieces are
# cached and only unseen words reach the tokenizer, which is most of the embedding's cost. The
# ids are exactly the tokenizer's on the whole text (`tests/unit/test_embedding.py`).
_WORD = re.compile(r" *[^ ]+")
# Distinct words kept; past it the cache starts afresh (bounded memory on hostile traffic).
CACHE_WORDS = 200_000


@dataclass(frozen=True)
class StaticEmbedder:
    """Unit-norm mean of the token vectors of each text: `embed(texts)` is (n, dim) float32."""

    table: npt.NDArray[np.float32]
    tokenizer: Any
    digest: str
    _pieces: dict[str, list[int]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids, as `tokenizer.encode(text)` gives them (ends' spaces stripped)."""
        words = [_words(_clip(text).strip(" ")) for text in texts]
        pieces = self._pieces
        unseen = list({w for ws in words for w in ws if w not in pieces})
        if unseen:
            if len(pieces) + len(unseen) > CACHE_WORDS:
                pieces.clear()
            # encode_batch_fast skips the character offsets nobody here reads.
            encoded = self.tokenizer.encode_batch_fast(unseen, add_special_tokens=False)
            fresh = dict(zip(unseen, (e.ids for e in encoded), strict=True))
            if len(fresh) <= CACHE_WORDS:
                pieces.update(fresh)
            else:  # one batch of more distinct words than the cache holds: not cached
                pieces = {**pieces, **fresh}
        return [[token for w in ws for token in pieces[w]] for ws in words]

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids_of = self.token_ids(texts)
        lengths = np.fromiter((len(ids) for ids in ids_of), dtype=np.int64, count=len(texts))
        indptr = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        ids = np.fromiter(
            (token for row in ids_of for token in row), dtype=np.int64, count=int(indptr[-1])
        )
        # The mean of the token vectors as one sparse product (rows of 1/length).
        weights = np.repeat(1.0 / np.maximum(lengths, 1), lengths).astype(np.float32)
        bag = sp.csr_matrix((weights, ids, indptr), shape=(len(texts), self.table.shape[0]))
        vectors = np.asarray(bag @ self.table, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return cast(npt.NDArray[np.float32], vectors / np.maximum(norms, 1e-9))


def _words(text: str) -> list[str]:
    """The space-led words of `text`, each without the one space the normalizer adds back."""
    found = _WORD.findall(text)
    return found[:1] + [word[1:] for word in found[1:]]


@cache
def load_embedder() -> StaticEmbedder:
    """The pinned static embedding, read once per process from the installed package."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    package = _package_dir()
    weights_path = package.joinpath(*_WEIGHTS)
    tokenizer_path = package.joinpath(*_TOKENIZER)
    digests = [
        checked_digest(path, _DIGESTS, EMBEDDER_PACKAGE, EmbedderUnavailable)
        for path in (weights_path, tokenizer_path)
    ]
    table = load_file(str(weights_path))["embedding.weight"].astype(np.float32)
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return StaticEmbedder(table=np.ascontiguousarray(table), tokenizer=tokenizer, digest=digests[0])
