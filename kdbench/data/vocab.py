"""The Keras IMDB recipe shared by every text dataset: tokenise, rank words, map to ids, pad.

Two stages so the expensive one is cached independently of `num_words` / `maxlen`:
1. `encode_corpus`: words of each document -> frequency rank (1 = most frequent in the *train*
   documents, ties broken by first occurrence as Keras' Tokenizer does; 0 = unseen in train),
   stored flat with per-document lengths.
2. `keras_sequences`: rank r -> id r + index_from (Keras: 0 pad, 1 start, 2 OOV, 3 reserved,
   the most frequent word is 4); ids >= num_words become OOV; a start id is prepended; sequences
   are padded and truncated to `maxlen` at the front (Keras' `pad_sequences` defaults 'pre').
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

import numpy as np

from ..errors import KdbenchError

__all__ = ["tokenize", "rank_vocabulary", "to_ranks", "encode_corpus", "vocabulary", "check_text_options", "keras_sequences",
           "PAD", "START", "OOV", "INDEX_FROM"]

PAD, START, OOV = 0, 1, 2
INDEX_FROM = 3
# Keras' Tokenizer default filters (the apostrophe is kept, as there)
KERAS_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'
_TRANSLATE = str.maketrans({c: " " for c in KERAS_FILTERS})
_HTML_TAG = re.compile(r"<[^>]*>")


def tokenize(text: str) -> list[str]:
    """Lowercase, drop HTML tags such as `<br />`, turn Keras' punctuation filters into spaces, split."""
    return _HTML_TAG.sub(" ", text).lower().translate(_TRANSLATE).split()


def rank_vocabulary(docs: Iterable[Sequence[str]]) -> dict[str, int]:
    """word -> rank (1-based) by descending frequency; ties keep first-occurrence order."""
    counts: Counter[str] = Counter()
    for words in docs:
        counts.update(words)
    ordered = sorted(counts.items(), key=lambda kv: -kv[1])  # stable: Counter keeps insertion order
    return {w: i + 1 for i, (w, _) in enumerate(ordered)}


def to_ranks(docs: Sequence[Sequence[str]], ranks: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(flat int32 ranks, int64 lengths) of tokenised documents; words unseen in train get rank 0."""
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    get = ranks.get
    flat = np.fromiter((get(w, 0) for d in docs for w in d), dtype=np.int32, count=int(lengths.sum()))
    return flat, lengths


def encode_corpus(train_texts: Sequence[str], **other_splits: Sequence[str]) -> tuple[dict[str, np.ndarray], int]:
    """Stage 1: arrays `<split>_tokens`, `<split>_lengths` for train and every other split, ranked on
    train only, plus `vocab` (ranked words, UTF-8, newline-separated, uint8); and the vocabulary size."""
    train_docs = [tokenize(t) for t in train_texts]
    ranks = rank_vocabulary(train_docs)
    out: dict[str, np.ndarray] = {}
    out["train_tokens"], out["train_lengths"] = to_ranks(train_docs, ranks)
    for split, texts in other_splits.items():
        out[f"{split}_tokens"], out[f"{split}_lengths"] = to_ranks([tokenize(t) for t in texts], ranks)
    out["vocab"] = np.frombuffer("\n".join(ranks).encode("utf-8"), dtype=np.uint8).copy()
    return out, len(ranks)


def vocabulary(vocab_bytes: np.ndarray) -> list[str]:
    """The ranked word list back from the stored `vocab` array (index 0 = rank 1)."""
    text = np.asarray(vocab_bytes).tobytes().decode("utf-8")
    return text.split("\n") if text else []


def check_text_options(num_words: int, maxlen: int) -> None:
    if not isinstance(num_words, (int, np.integer)) or num_words <= INDEX_FROM + 1:
        raise KdbenchError(f"num_words must be an integer > {INDEX_FROM + 1}, got {num_words!r}")
    if not isinstance(maxlen, (int, np.integer)) or maxlen < 1:
        raise KdbenchError(f"maxlen must be a positive integer, got {maxlen!r}")


def keras_sequences(tokens: np.ndarray, lengths: np.ndarray, *, num_words: int = 5000, maxlen: int = 500,
                    index_from: int = INDEX_FROM) -> np.ndarray:
    """Stage 2: int64 (N, maxlen) ids, start-prefixed, OOV-capped, padded / truncated at the front."""
    check_text_options(num_words, maxlen)
    tokens = np.asarray(tokens, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    n = lengths.shape[0]
    ids = tokens + index_from
    ids[(tokens <= 0) | (ids >= num_words)] = OOV
    full = lengths + 1  # with the start id
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if n else np.zeros(0, np.int64)
    seq = np.insert(ids, starts, START)  # start id in front of each document
    doc = np.repeat(np.arange(n), full)
    pos_from_end = np.repeat(np.cumsum(full), full) - 1 - np.arange(seq.shape[0])
    keep = pos_from_end < maxlen  # truncating='pre': the last maxlen ids survive
    out = np.zeros((n, maxlen), dtype=np.int64)  # padding='pre': zeros in front
    out[doc[keep], maxlen - 1 - pos_from_end[keep]] = seq[keep]
    return out
