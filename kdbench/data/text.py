"""Binary sentiment text datasets, all through the Keras recipe in `vocab.py`.

IMDB (aclImdb folders), the 5k IMDB subset (CSV.gz), SST-2 (GLUE TSVs), and NLTK's movie
reviews (zip). The vocabulary is always ranked on the training documents only; datasets without
an official test split get a fixed 20% test carve (seed 0) *before* the vocabulary is built.
"""
from __future__ import annotations

import csv
import gzip
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

import numpy as np

from ..config import TeacherRecipe
from ..errors import KdbenchError
from .base import DataSpec
from .catalogue import DatasetEntry, Decoded, Pool, register_dataset
from .splits import FIXED_TEST_NOTE, fixed_test_split
from .vocab import check_text_options, encode_corpus, keras_sequences

__all__ = ["TEXT_OPTIONS", "RECIPE_NOTE", "text_assemble", "encode_labelled", "carve_fixed_test", "check_options",
           "read_review_csv", "read_labelled_tsv", "read_polarity_zip"]

TEXT_OPTIONS = {"num_words": 5000, "maxlen": 500}
RECIPE_NOTE = ("Keras IMDB recipe: lowercase, HTML tags and punctuation stripped, top num_words by train "
               "frequency (0 pad, 1 start, 2 OOV, words from 4), 'pre' padding/truncation to maxlen")


def text_assemble(entry: DatasetEntry, decoded: Decoded, options: Mapping[str, Any]) -> Pool:
    """Cached word ranks -> int64 (N, maxlen) ids with the requested num_words / maxlen."""
    a = decoded.arrays
    nw, ml = options["num_words"], options["maxlen"]
    xtr = keras_sequences(a["train_tokens"], a["train_lengths"], num_words=nw, maxlen=ml)
    xte = keras_sequences(a["test_tokens"], a["test_lengths"], num_words=nw, maxlen=ml)
    spec = DataSpec(input_shape=(int(ml),), num_classes=entry.num_classes, modality="text", vocab_size=int(nw))
    info = {"recipe": RECIPE_NOTE, "vocabulary_size_train": int(decoded.meta.get("vocabulary_size", 0))}
    if "test_split" in decoded.meta:
        info["test_split"] = decoded.meta["test_split"]
    return Pool(xtr, np.asarray(a["train_y"]), xte, np.asarray(a["test_y"]), spec, scale=None, info=info)


def encode_labelled(train: Sequence[tuple[str, int]], meta: dict[str, Any], **others: Sequence[tuple[str, int]]) -> Decoded:
    """Tokenise (text, label) pairs of train and the other splits (test, ...) into the cached arrays."""
    arrays, vocab_size = encode_corpus([t for t, _ in train], **{k: [t for t, _ in v] for k, v in others.items()})
    for split, docs in {"train": train, **others}.items():
        arrays[f"{split}_y"] = np.asarray([y for _, y in docs], dtype=np.int64)
    return Decoded(arrays, {**meta, "vocabulary_size": vocab_size})


def carve_fixed_test(docs: Sequence[tuple[str, int]]) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    tr, te = fixed_test_split(len(docs))
    return [docs[i] for i in tr], [docs[i] for i in te]


def check_options(num_words: int, maxlen: int, **_others: Any) -> None:
    """A text dataset's `num_words` / `maxlen`, checked when a run is planned (not after its data loads)."""
    check_text_options(num_words, maxlen)


def _text_register(name: str, **kw: Any):
    """A text dataset of the IMDB family: the paper's IMDB teacher and budget students by default."""
    return register_dataset(name, modality="text", num_classes=2, assemble=text_assemble,
                            options={**TEXT_OPTIONS, **kw.pop("options", {})}, check_options=check_options,
                            default_teacher="paper-imdb-teacher", student_budget="imdb", **kw)


# ---------------------------------------------------------------------------------------------
# IMDB 50k: aclImdb/{train,test}/{pos,neg}/*.txt
# ---------------------------------------------------------------------------------------------

_ACL_DIRS = [f"{s}/{c}" for s in ("train", "test") for c in ("neg", "pos")]


def _acl_accepts(p: Path) -> bool:
    return all((p / d).is_dir() for d in _ACL_DIRS)


def _read_acl_split(root: Path, split: str) -> list[tuple[str, int]]:
    docs = []
    for label, cls in ((0, "neg"), (1, "pos")):
        for f in sorted((root / split / cls).glob("*.txt")):
            docs.append((f.read_text(encoding="utf-8", errors="replace"), label))
    if not docs:
        raise KdbenchError(f"{root / split} holds no reviews (expected {split}/pos/*.txt and {split}/neg/*.txt)")
    return docs


@_text_register(
    "imdb", stands_for="imdb", teacher_recipe=TeacherRecipe(epochs=3),
    description="IMDB movie reviews (Maas et al. 2011), 25k train / 25k test, binary sentiment",
    paths=("aclImdb",), accepts=_acl_accepts, sources=lambda p: [p / d for d in _ACL_DIRS],
    how_to_get="download aclImdb_v1.tar.gz from https://ai.stanford.edu/~amaas/data/sentiment/ and extract it "
               "so that <root>/aclImdb/train/pos/ exists (no offline copy ships with kdbench)",
)
def decode_acl_imdb(root: Path | None) -> Decoded:
    assert root is not None
    return encode_labelled(_read_acl_split(root, "train"), {"test_split": "aclImdb test/"}, test=_read_acl_split(root, "test"))


# ---------------------------------------------------------------------------------------------
# IMDB 5k subset: imdb-5k/movie_review.csv.gz with columns id,sentiment,review
# ---------------------------------------------------------------------------------------------

def read_review_csv(path: Path) -> list[tuple[str, int]]:
    """(review, sentiment) rows of a (gzipped) CSV with columns id, sentiment, review."""
    try:
        with (gzip.open(path, "rt", encoding="utf-8", newline="") if path.suffix == ".gz"
              else open(path, encoding="utf-8", newline="")) as f:
            reader = csv.DictReader(f)
            missing = {"sentiment", "review"} - set(reader.fieldnames or [])
            if missing:
                raise KdbenchError(f"{path}: missing column(s) {', '.join(sorted(missing))} (expected id,sentiment,review)")
            return [(row["review"], int(row["sentiment"])) for row in reader]
    except (OSError, EOFError, ValueError, csv.Error) as e:
        raise KdbenchError(f"cannot read {path}: {e}") from None


@_text_register(
    "imdb-5k", teacher_recipe=TeacherRecipe(epochs=5, batch_size=64),
    stands_for="imdb", substitute="a 5k-review subset of IMDB instead of the 25k/25k split",
    description="5,000 IMDB train reviews (text2vec movie_review), binary sentiment, no fixed split",
    paths=("imdb-5k/movie_review.csv.gz", "imdb-5k/movie_review.csv"),
    deviations=("5k IMDB subset instead of the 50k aclImdb", FIXED_TEST_NOTE),
    how_to_get="put movie_review.csv.gz (columns id,sentiment,review; the R package text2vec's movie_review "
               "data) in <root>/imdb-5k/",
)
def decode_imdb_5k(path: Path | None) -> Decoded:
    assert path is not None
    train, test = carve_fixed_test(read_review_csv(path))
    return encode_labelled(train, {"test_split": FIXED_TEST_NOTE}, test=test)


# ---------------------------------------------------------------------------------------------
# SST-2 (GLUE): SST-2/{train,dev,test}.tsv, header row, label<TAB>text, all labelled
# ---------------------------------------------------------------------------------------------

def read_labelled_tsv(path: Path) -> list[tuple[str, int]]:
    """(text, label) rows of a TSV with a header; the label column is `label`, the text the other one."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except (OSError, ValueError, csv.Error) as e:
        raise KdbenchError(f"cannot read {path}: {e}") from None
    if not rows or "label" not in rows[0] or len(rows[0]) != 2:
        raise KdbenchError(f"{path}: expected a header of two columns, one named 'label'; got {rows[0] if rows else 'nothing'}")
    li = rows[0].index("label")
    out = []
    for n, r in enumerate(rows[1:], start=2):
        if not r:
            continue
        try:
            out.append((r[1 - li], int(r[li])))
        except (IndexError, ValueError):
            raise KdbenchError(f"{path}:{n}: malformed row {r!r}") from None
    return out


SST2_FILES = ("train.tsv", "dev.tsv", "test.tsv")


def _sst2_accepts(p: Path) -> bool:
    return all((p / f).is_file() for f in SST2_FILES)


def sst2_assemble(entry: DatasetEntry, decoded: Decoded, options: Mapping[str, Any]) -> Pool:
    """Test = test.tsv by default; `test_file="dev"` takes GLUE's dev.tsv instead."""
    which = options["test_file"]
    if which not in ("test", "dev"):
        raise KdbenchError(f"sst2 option test_file must be 'test' or 'dev', got {which!r}")
    if which == "test" and decoded.meta.get("test_unlabelled"):
        raise KdbenchError("SST-2 test.tsv here has no labels (GLUE's official test set); "
                           "load with test_file='dev' to evaluate on dev.tsv")
    a = dict(decoded.arrays)
    if which == "dev":
        for k in ("tokens", "lengths", "y"):
            a[f"test_{k}"] = a[f"dev_{k}"]
    pool = text_assemble(entry, Decoded(a, decoded.meta), options)
    pool.info["test_split"] = f"SST-2 {which}.tsv"
    return pool


@register_dataset(
    "sst2", modality="text", num_classes=2, assemble=sst2_assemble, default_teacher="paper-imdb-teacher",
    student_budget="relative", teacher_recipe=TeacherRecipe(epochs=3),
    options={**TEXT_OPTIONS, "test_file": "test"}, check_options=check_options,
    description="SST-2 (GLUE), 67k train sentences; test = the labelled test.tsv (1,821), dev.tsv (872) as an option",
    paths=("SST-2",), accepts=_sst2_accepts, sources=lambda p: [p / f for f in SST2_FILES],
    deviations=("SST-2 test = the labelled test.tsv (SST binary test set), not GLUE dev.tsv, unless test_file='dev'",),
    how_to_get="put GLUE's SST-2 folder with labelled train.tsv, dev.tsv, test.tsv (header, label<TAB>text) "
               "as <root>/SST-2/",
)
def decode_sst2(folder: Path | None) -> Decoded:
    """Train, dev and test all tokenised with the train vocabulary; the test choice is made at assembly."""
    assert folder is not None
    test_path = folder / "test.tsv"
    with open(test_path, encoding="utf-8") as f:
        labelled = "label" in f.readline().rstrip("\n").split("\t")
    test = read_labelled_tsv(test_path) if labelled else []  # GLUE's official test.tsv has no labels
    return encode_labelled(read_labelled_tsv(folder / "train.tsv"), {"test_unlabelled": not labelled},
                           dev=read_labelled_tsv(folder / "dev.tsv"), test=test)


# ---------------------------------------------------------------------------------------------
# NLTK movie_reviews (Pang & Lee polarity 2.0): nltk/corpora/movie_reviews.zip
# ---------------------------------------------------------------------------------------------

def read_polarity_zip(path: Path) -> list[tuple[str, int]]:
    """(text, label) of every movie_reviews/{neg,pos}/*.txt in the zip, in sorted name order."""
    docs = []
    try:
        with zipfile.ZipFile(path) as z:
            for name in sorted(z.namelist()):
                parts = PurePosixPath(name).parts
                if len(parts) >= 2 and parts[-2] in ("neg", "pos") and name.endswith(".txt"):
                    docs.append((z.read(name).decode("utf-8", errors="replace"), int(parts[-2] == "pos")))
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise KdbenchError(f"cannot read {path}: {e}") from None
    if not docs:
        raise KdbenchError(f"{path} holds no movie_reviews/pos/*.txt or movie_reviews/neg/*.txt")
    return docs


@_text_register(
    "movie-reviews", teacher_recipe=TeacherRecipe(epochs=10, batch_size=32),
    description="Pang & Lee movie review polarity 2.0 (NLTK corpus), 2,000 documents, no fixed split",
    paths=("nltk/corpora/movie_reviews.zip", "nltk_data/corpora/movie_reviews.zip", "corpora/movie_reviews.zip"),
    deviations=(FIXED_TEST_NOTE,),
    how_to_get="`python -m nltk.downloader -d <root>/nltk movie_reviews`, or put NLTK's movie_reviews.zip in "
               "<root>/nltk/corpora/",
)
def decode_movie_reviews(path: Path | None) -> Decoded:
    assert path is not None
    train, test = carve_fixed_test(read_polarity_zip(path))
    return encode_labelled(train, {"test_split": FIXED_TEST_NOTE}, test=test)
