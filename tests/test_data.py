"""Dataset catalogue: every loader on tiny generated fixtures and on the real data root, the split
protocol, the decoded-array cache, errors, download (mocked: no network) and the CLI table."""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import kdbench.data.cache as cache_mod
import kdbench.data.catalogue as catalogue_mod
from kdbench.cli import data_cmd
from kdbench.data import (DATASETS, CacheCorruptionWarning, data_roots, dataset_table, decode_dataset, download,
                          load_dataset)
from kdbench.data.cifar import CIFAR10_CLASSES
from kdbench.data.idx import IDX_FILES, read_idx, write_idx
from kdbench.data.vocab import keras_sequences, rank_vocabulary, tokenize, vocabulary
from kdbench.errors import KdbenchError

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# isolation: fixture tests never see a real data root or the user's cache
# ---------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _isolated(request, tmp_path, monkeypatch):
    if request.node.get_closest_marker("realdata"):
        return  # real-data tests use the real root and the default cache (fast on repeat)
    monkeypatch.delenv("KDBENCH_DATA", raising=False)
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(catalogue_mod, "SYSTEM_DATA_ROOT", tmp_path / "no-system-datasets")


# ---------------------------------------------------------------------------------------------
# fixture writers (each returns the data root)
# ---------------------------------------------------------------------------------------------

def unique_images(n: int, shape: tuple[int, ...], offset: int = 0) -> np.ndarray:
    """uint8 images whose first two pixels encode the row number, so every row is recognisable."""
    rng = np.random.default_rng(offset)
    x = rng.integers(0, 256, size=(n, int(np.prod(shape))), dtype=np.uint8)
    ids = np.arange(n) + offset
    x[:, 0], x[:, 1] = ids % 256, ids // 256
    return x.reshape((n, *shape))


def row_ids(x: torch.Tensor) -> list[int]:
    flat = (x.reshape(len(x), -1)[:, :2] * 255).round().long()
    return (flat[:, 0] + 256 * flat[:, 1]).tolist()


def make_idx(root: Path, folder: str = "MNIST/raw", *, gz: bool = False, n_train: int = 50, n_test: int = 12) -> dict:
    arrays = {
        "train_x": unique_images(n_train, (28, 28)),
        "train_y": (np.arange(n_train) % 10).astype(np.uint8),
        "test_x": unique_images(n_test, (28, 28), offset=1000),
        "test_y": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for key, stem in IDX_FILES.items():
        write_idx(root / folder / stem, arrays[key], gz=gz)
    return arrays


def make_cifar_pickles(root: Path, protocol: int = 2, n_per_batch: int = 4, n_test: int = 6) -> dict:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        x = unique_images(n_per_batch, (3, 32, 32), offset=100 * i).reshape(n_per_batch, -1)
        y = [(i + j) % 10 for j in range(n_per_batch)]
        (d / f"data_batch_{i}").write_bytes(pickle.dumps({b"batch_label": b"x", b"data": x, b"labels": y}, protocol=protocol))
        xs.append(x), ys.extend(y)
    tx = unique_images(n_test, (3, 32, 32), offset=2000).reshape(n_test, -1)
    ty = list(range(n_test))
    (d / "test_batch").write_bytes(pickle.dumps({"data": tx, "labels": ty}, protocol=protocol))
    return {"train_x": np.concatenate(xs).reshape(-1, 3, 32, 32), "train_y": ys, "test_x": tx.reshape(-1, 3, 32, 32), "test_y": ty}


def _jpeg(value: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (value, value, value)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def jpeg_tree_files(n_train: int = 2, n_test: int = 1) -> dict[str, bytes]:
    """relative path -> JPEG bytes; constant grey images whose value encodes class and index."""
    files = {}
    for c, cls in enumerate(CIFAR10_CLASSES):
        for split, n in (("train", n_train), ("test", n_test)):
            for k in range(n):
                files[f"{split}/{cls}/{k:04d}.jpg"] = _jpeg(20 * c + 5 * k + (3 if split == "test" else 0))
    return files


def make_jpeg(root: Path, *, archive: bool) -> None:
    files = jpeg_tree_files()
    base = root / "cifar10-jpeg"
    base.mkdir(parents=True)
    if archive:
        with tarfile.open(base / "cifar10-jpeg.tar.gz", "w:gz") as tar:
            for name, data in sorted(files.items(), reverse=True):  # order in the archive must not matter
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        for name, data in files.items():
            (base / name).parent.mkdir(parents=True, exist_ok=True)
            (base / name).write_bytes(data)


TRAIN_REVIEWS = [
    ("A great film.<br /><br />Great acting, great story!", 1),
    ("Terrible. The worst film; boring and bad.", 0),
    ("I loved it: great fun", 1),
    ("Bad, bad, bad film.", 0),
    ("Great? No -- just bad.", 0),
    ("Wonderful acting and a great cast", 1),
    ("So boring I left", 0),
    ("A film I'd see again", 1),
    ("Not good, not great", 0),
    ("Superb and moving", 1),
]


def make_acl(root: Path) -> None:
    for split in ("train", "test"):
        for i, (text, label) in enumerate(TRAIN_REVIEWS):
            d = root / "aclImdb" / split / ("pos" if label else "neg")
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{i}_{7 if label else 2}.txt").write_text(text if split == "train" else text.upper() + " unseenword")
    (root / "aclImdb" / "imdb.vocab").write_text("ignored\n")


def make_csv_gz(root: Path) -> None:
    (root / "imdb-5k").mkdir(parents=True)
    lines = ['id,sentiment,review'] + [f'{i}_x,{y},"{t.replace(chr(34), chr(34) * 2)}"' for i, (t, y) in enumerate(TRAIN_REVIEWS)]
    with gzip.open(root / "imdb-5k" / "movie_review.csv.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def make_sst2(root: Path) -> None:
    d = root / "SST-2"
    d.mkdir(parents=True)
    (d / "train.tsv").write_text("label\tsentence\n" + "".join(f"{y}\t{t}\n" for t, y in TRAIN_REVIEWS))
    (d / "dev.tsv").write_text("label\tcontent\n1\tgreat great\n0\tbad\n0\t\" boring\n")
    (d / "test.tsv").write_text("label\tcontent\n0\tboring film\n1\tgreat cast\n")


def make_polarity_zip(root: Path) -> None:
    d = root / "nltk" / "corpora"
    d.mkdir(parents=True)
    with zipfile.ZipFile(d / "movie_reviews.zip", "w") as z:
        z.writestr("movie_reviews/README", "not a review")
        for i, (text, label) in enumerate(TRAIN_REVIEWS):
            z.writestr(f"movie_reviews/{'pos' if label else 'neg'}/cv{i:03d}.txt", text.lower())


# ---------------------------------------------------------------------------------------------
# formats
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip(tmp_path, gz):
    for arr in (unique_images(3, (4, 5)), np.array([1, -2, 3], dtype=np.int32), np.linspace(0, 1, 6, dtype=np.float32)):
        p = write_idx(tmp_path / "a", arr, gz=gz)
        out = read_idx(p)
        assert out.dtype == arr.dtype and np.array_equal(out, arr)


@pytest.mark.parametrize("name,folder,gz", [("mnist", "MNIST/raw", False), ("mnist", "MNIST/raw", True),
                                            ("fashion-mnist", "FashionMNIST/raw", False),
                                            ("fashion-mnist", "fashion-mnist", True)])  # Debian's layout
def test_idx_loader(tmp_path, name, folder, gz):
    arrays = make_idx(tmp_path / "root", folder, gz=gz)
    s = load_dataset(name, tmp_path / "root", val_fraction=0.2)
    assert s.sizes() == {"train": 40, "val": 10, "test": 12}
    assert s.spec.input_shape == (1, 28, 28) and s.spec.num_classes == 10 and s.spec.modality == "image"
    assert s.train.x.dtype == torch.float32 and s.train.y.dtype == torch.int64
    expected = torch.from_numpy(arrays["test_x"]).float().div(255).unsqueeze(1)
    assert torch.equal(s.test.x, expected)  # pixels / 255 exactly, test untouched and in order
    assert s.test.y.tolist() == arrays["test_y"].tolist()
    # train and val rows are the original rows with their own labels
    for split in (s.train, s.val):
        for i, row in enumerate(row_ids(split.x)):
            assert split.y[i].item() == arrays["train_y"][row]
            assert torch.equal(split.x[i, 0], torch.from_numpy(arrays["train_x"][row]).float() / 255)
    assert s.info["source"] == str(tmp_path / "root" / folder)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_pickle_loader(tmp_path, protocol):
    ref = make_cifar_pickles(tmp_path, protocol)
    s = load_dataset("cifar10", tmp_path, val_fraction=0.25)
    assert s.sizes() == {"train": 15, "val": 5, "test": 6}
    assert s.spec.input_shape == (3, 32, 32)
    assert torch.equal(s.test.x, torch.from_numpy(ref["test_x"]).float() / 255)
    ids = sorted(row_ids(s.train.x) + row_ids(s.val.x))
    assert ids == sorted(row_ids(torch.from_numpy(ref["train_x"]).float() / 255))


def test_cifar_pickle_refuses_code(tmp_path):
    make_cifar_pickles(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(KdbenchError, match=r"corrupt CIFAR batch .*test_batch.*not allowed"):
        load_dataset("cifar10", tmp_path)


@pytest.mark.parametrize("archive", [True, False])
def test_cifar_jpeg_loader(tmp_path, archive):
    make_jpeg(tmp_path, archive=archive)
    s = load_dataset("cifar10-jpeg", tmp_path, val_fraction=0.0)
    assert s.sizes() == {"train": 20, "val": 0, "test": 10}
    assert s.spec.input_shape == (3, 32, 32)
    # classes in sorted folder order = CIFAR-10's label order; files in numeric order within a class
    assert s.train.y.tolist() == [c for c in range(10) for _ in range(2)]
    want = torch.tensor([20 * c + 5 * k for c in range(10) for k in range(2)], dtype=torch.float32) / 255
    assert torch.allclose(s.train.x.mean(dim=(1, 2, 3)), want, atol=2 / 255)
    assert torch.allclose(s.test.x.mean(dim=(1, 2, 3)), (torch.arange(10) * 20 + 3).float() / 255, atol=2 / 255)
    assert any("JPEG" in d for d in s.info["deviations"])


def test_cifar_jpeg_wrong_classes(tmp_path):
    make_jpeg(tmp_path, archive=False)
    (tmp_path / "cifar10-jpeg" / "train" / "truck").rename(tmp_path / "cifar10-jpeg" / "train" / "lorry")
    with pytest.raises(KdbenchError, match="expected CIFAR-10's"):
        load_dataset("cifar10-jpeg", tmp_path)


# ---------------------------------------------------------------------------------------------
# text: the Keras recipe by hand, then each format
# ---------------------------------------------------------------------------------------------

def test_keras_recipe_by_hand():
    docs = ["The cat sat.", "the dog<br />sat, the END!", "It's a dog's life"]
    words = [tokenize(d) for d in docs]
    assert words[:2] == [["the", "cat", "sat"], ["the", "dog", "sat", "the", "end"]]
    assert words[2] == ["it's", "a", "dog's", "life"]  # Keras keeps apostrophes
    ranks = rank_vocabulary(words[:2])  # the 3, sat 2, then ties in first-seen order: cat, dog, end
    assert ranks == {"the": 1, "sat": 2, "cat": 3, "dog": 4, "end": 5}
    flat = np.array([ranks[w] for w in words[0] + words[1]], dtype=np.int32)
    lengths = np.array([3, 5])
    # ids = rank + 3 (the 4, sat 5, cat 6, dog 7, end 8); num_words=7 turns dog and end into OOV 2
    out = keras_sequences(flat, lengths, num_words=7, maxlen=5)
    assert out.tolist() == [[0, 1, 4, 6, 5],  # start id 1, padded at the front
                            [4, 2, 5, 4, 2]]  # [1, 4, 2, 5, 4, 2] truncated at the front
    assert keras_sequences(flat, lengths, num_words=100, maxlen=7).tolist() == [[0, 0, 0, 1, 4, 6, 5],
                                                                                [0, 1, 4, 7, 5, 4, 8]]
    # empty documents, and rank 0 (unseen in train) -> OOV
    out = keras_sequences(np.array([0, 1], np.int32), np.array([0, 2, 0]), num_words=10, maxlen=3)
    assert out.tolist() == [[0, 0, 1], [1, 2, 4], [0, 0, 1]]
    with pytest.raises(KdbenchError, match="num_words"):
        keras_sequences(flat, lengths, num_words=3, maxlen=5)


def _check_text(s, n_train_pool, n_test, maxlen=500, num_words=5000):
    assert s.spec.modality == "text" and s.spec.input_shape == (maxlen,) and s.spec.vocab_size == num_words
    assert s.spec.num_classes == 2
    for split in (s.train, s.val, s.test):
        assert split.x.dtype == torch.int64 and split.x.shape[1] == maxlen
        assert ((split.x >= 0) & (split.x < num_words)).all()
        # a padded (not truncated) row has the start id right after its padding
        padded = split.x[split.x[:, 0] == 0]
        first = (padded != 0).int().argmax(dim=1)
        assert (padded[torch.arange(len(padded)), first] == 1).all()
    assert len(s.train) + len(s.val) == n_train_pool and len(s.test) == n_test


def test_imdb_acl_loader(tmp_path):
    make_acl(tmp_path)
    s = load_dataset("imdb", tmp_path, val_fraction=0.2, maxlen=12, num_words=50)
    _check_text(s, 10, 10, maxlen=12, num_words=50)
    assert sorted(s.test.y.tolist()) == sorted(y for _, y in TRAIN_REVIEWS)
    # test = the same reviews upper-cased + an unseen word: same ids, then OOV (2)
    d, _ = decode_dataset(DATASETS.get("imdb"), tmp_path / "aclImdb")
    words = vocabulary(d.arrays["vocab"])
    assert words[:3] == ["great", "bad", "film"]  # counted in test_imdb_vocab_counts
    assert "br" not in words and "unseenword" not in words
    assert s.test.x[:, -1].tolist() == [2] * 10


def test_imdb_vocab_counts(tmp_path):
    # hand count over TRAIN_REVIEWS: great 7, bad 5 ("Bad, bad, bad" counts 3), film 4
    from collections import Counter

    counts = Counter(w for t, _ in TRAIN_REVIEWS for w in tokenize(t))
    assert counts["great"] == 7 and counts["film"] == 4 and counts["bad"] == 5
    ranked = list(rank_vocabulary([tokenize(t) for t, _ in TRAIN_REVIEWS]))
    assert ranked[:3] == ["great", "bad", "film"]


def test_imdb_5k_loader(tmp_path):
    make_csv_gz(tmp_path)
    s = load_dataset("imdb-5k", tmp_path, val_fraction=0.25, maxlen=20)
    _check_text(s, 8, 2, maxlen=20)
    assert s.info["test_split"].startswith("no official test split: test carved as 20% with fixed seed 0")
    assert any("5k IMDB subset" in d for d in s.info["deviations"])
    # the carved test is independent of split_seed
    s2 = load_dataset("imdb-5k", tmp_path, val_fraction=0.25, split_seed=3, maxlen=20)
    assert torch.equal(s.test.x, s2.test.x) and torch.equal(s.test.y, s2.test.y)


def test_sst2_loader(tmp_path):
    make_sst2(tmp_path)
    s = load_dataset("sst2", tmp_path, val_fraction=0.2, maxlen=6)
    _check_text(s, 10, 2, maxlen=6)
    assert s.test.y.tolist() == [0, 1] and s.info["test_split"] == "SST-2 test.tsv"
    words = vocabulary(decode_dataset(DATASETS.get("sst2"), tmp_path / "SST-2")[0].arrays["vocab"])
    great, boring, film, cast = (words.index(w) + 4 for w in ("great", "boring", "film", "cast"))
    assert s.test.x.tolist() == [[0, 0, 0, 1, boring, film], [0, 0, 0, 1, great, cast]]
    dev = load_dataset("sst2", tmp_path, maxlen=6, test_file="dev")
    assert dev.test.y.tolist() == [1, 0, 0] and dev.info["test_split"] == "SST-2 dev.tsv"
    assert dev.test.x[0].tolist() == [0, 0, 0, 1, great, great]
    with pytest.raises(KdbenchError, match="test_file must be"):
        load_dataset("sst2", tmp_path, test_file="train")


def test_sst2_official_unlabelled_test(tmp_path):
    make_sst2(tmp_path)
    (tmp_path / "SST-2" / "test.tsv").write_text("index\tsentence\n0\tboring film\n1\tgreat cast\n")
    with pytest.raises(KdbenchError, match="test_file='dev'"):
        load_dataset("sst2", tmp_path)
    assert len(load_dataset("sst2", tmp_path, test_file="dev").test) == 3


def test_cache_unusable_still_loads(tmp_path, monkeypatch):
    make_idx(tmp_path)
    (tmp_path / "not-a-dir").write_text("x")
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "not-a-dir"))
    with pytest.warns(UserWarning, match="without a cache"):
        s = load_dataset("mnist", tmp_path)
    assert s.info["cache"] == "off" and len(s.test) == 12


def test_movie_reviews_loader(tmp_path):
    make_polarity_zip(tmp_path)
    s = load_dataset("movie-reviews", tmp_path, val_fraction=0.0, maxlen=15)
    _check_text(s, 8, 2, maxlen=15)
    assert sorted(s.train.y.tolist() + s.test.y.tolist()) == sorted(y for _, y in TRAIN_REVIEWS)


# ---------------------------------------------------------------------------------------------
# split protocol
# ---------------------------------------------------------------------------------------------

def test_split_determinism(tmp_path):
    make_idx(tmp_path, n_train=200)
    a = load_dataset("mnist", tmp_path, split_seed=0)
    b = load_dataset("mnist", tmp_path, split_seed=0)
    c = load_dataset("mnist", tmp_path, split_seed=1)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    assert row_ids(a.val.x) != row_ids(c.val.x)
    for s in (a, c):
        tr, va = set(row_ids(s.train.x)), set(row_ids(s.val.x))
        assert not tr & va and tr | va == set(range(200)) and len(va) == 20
        assert row_ids(s.train.x) == sorted(tr)  # kept rows stay in source order
    assert torch.equal(a.test.x, c.test.x) and torch.equal(a.test.y, c.test.y)  # test untouched
    assert a.info["split_seed"] == 0 and c.info["split_seed"] == 1 and a.info["val_fraction"] == 0.1
    assert a.info["sizes"] == {"train": 180, "val": 20, "test": 12}


def test_max_train_subset(tmp_path):
    make_idx(tmp_path, n_train=200)
    full = load_dataset("mnist", tmp_path)
    a = load_dataset("mnist", tmp_path, max_train=30)
    b = load_dataset("mnist", tmp_path, max_train=30)
    c = load_dataset("mnist", tmp_path, max_train=30, split_seed=5)
    assert len(a.train) == 30 and torch.equal(a.train.x, b.train.x)
    assert set(row_ids(a.train.x)) <= set(row_ids(full.train.x))
    assert torch.equal(a.val.x, full.val.x) and torch.equal(a.test.x, full.test.x)  # carved before the subset
    assert row_ids(a.train.x) != row_ids(c.train.x)
    assert a.info["max_train"] == 30 and any("train subset: 30 of 180" in d for d in a.info["deviations"])
    assert len(load_dataset("mnist", tmp_path, max_train=10_000).train) == 180


@pytest.mark.parametrize("kwargs,match", [({"val_fraction": 1.0}, "val_fraction"), ({"val_fraction": -0.1}, "val_fraction"),
                                          ({"max_train": 0}, "max_train"), ({"num_words": 10}, "has no option 'num_words'")])
def test_bad_arguments(tmp_path, kwargs, match):
    make_idx(tmp_path)
    with pytest.raises(KdbenchError, match=match):
        load_dataset("mnist", tmp_path, **kwargs)


def test_builtin_fixed_test_split():
    a = load_dataset("digits", split_seed=0)
    b = load_dataset("digits", split_seed=7, val_fraction=0.3)
    assert torch.equal(a.test.x, b.test.x) and a.sizes()["test"] == 359
    assert a.spec.input_shape == (1, 8, 8) and float(a.train.x.max()) == 1.0  # values / 16
    assert "fixed seed 0" in a.info["test_split"]


# ---------------------------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------------------------

def _entry_files(tmp_path: Path, name: str) -> list[Path]:
    return sorted((tmp_path / "cache" / "datasets" / name).glob("*/*.npy"))


def test_cache_second_load_equal_and_memory_mapped(tmp_path):
    make_idx(tmp_path)
    first = load_dataset("mnist", tmp_path)
    assert first.info["cache"] == "built"
    second = load_dataset("mnist", tmp_path)
    assert second.info["cache"] == "hit"
    for s in ("train", "val", "test"):
        assert torch.equal(getattr(first, s).x, getattr(second, s).x) and torch.equal(getattr(first, s).y, getattr(second, s).y)
    decoded, state = decode_dataset(DATASETS.get("mnist"), tmp_path / "MNIST" / "raw")
    assert state == "hit" and all(isinstance(a, np.memmap) for a in decoded.arrays.values())
    side = json.loads((_entry_files(tmp_path, "mnist")[0].parent / "entry.json").read_text())
    assert set(side["arrays"]) == {"train_x", "train_y", "test_x", "test_y"}
    assert all(len(r["sha256"]) == 64 for r in side["arrays"].values())
    assert side["source"][0]["size"] > 0 and "mtime_ns" in side["source"][0]


@pytest.mark.parametrize("damage", ["flip", "truncate", "sidecar"])
def test_cache_corruption_detected_and_rebuilt(tmp_path, damage):
    make_csv_gz(tmp_path)
    first = load_dataset("imdb-5k", tmp_path, maxlen=20)
    files = _entry_files(tmp_path, "imdb-5k")
    target = next(f for f in files if f.name == "train_tokens.npy")
    if damage == "flip":
        raw = bytearray(target.read_bytes())
        raw[-1] ^= 0xFF
        target.write_bytes(bytes(raw))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:-7])
    else:
        (target.parent / "entry.json").write_text('{"format": 1, "arr')
    with pytest.warns(CacheCorruptionWarning, match="rebuilding"):
        again = load_dataset("imdb-5k", tmp_path, maxlen=20)
    assert again.info["cache"] == "built"
    assert torch.equal(first.train.x, again.train.x) and torch.equal(first.test.x, again.test.x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_dataset("imdb-5k", tmp_path, maxlen=20).info["cache"] == "hit"


def test_cache_stale_source_rebuilds_quietly(tmp_path):
    make_idx(tmp_path, n_test=12)
    load_dataset("mnist", tmp_path)
    make_idx(tmp_path, n_test=8)  # source files replaced: other size
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = load_dataset("mnist", tmp_path)
    assert s.info["cache"] == "built" and len(s.test) == 8


def test_cache_interrupted_write_is_never_used(tmp_path, monkeypatch):
    make_idx(tmp_path)
    real = cache_mod.atomic_write

    def dies_on_sidecar(path, write):
        if path.name == "entry.json":
            raise KeyboardInterrupt("killed")
        return real(path, write)

    monkeypatch.setattr(cache_mod, "atomic_write", dies_on_sidecar)
    with pytest.raises(KeyboardInterrupt):
        load_dataset("mnist", tmp_path)
    entry = _entry_files(tmp_path, "mnist")[0].parent
    assert not (entry / "entry.json").exists() and not list(entry.glob(".*.tmp"))
    (entry / "test_x.npy").write_bytes(b"garbage from a half-finished writer")
    monkeypatch.setattr(cache_mod, "atomic_write", real)
    s = load_dataset("mnist", tmp_path)
    assert s.info["cache"] == "built" and len(s.test) == 12
    assert load_dataset("mnist", tmp_path).info["cache"] == "hit"


SLOW_BUILD = """
import sys, time, hashlib
import kdbench.data.text as text
from kdbench.data import load_dataset
fast = text.encode_labelled
text.encode_labelled = lambda *a, **k: (time.sleep(1.0), fast(*a, **k))[1]  # widen the race window
print("ready", flush=True)
sys.stdin.readline()
s = load_dataset("imdb-5k", sys.argv[1], maxlen=20)
print(s.info["cache"], hashlib.sha256(s.train.x.numpy().tobytes() + s.test.x.numpy().tobytes()).hexdigest())
"""


def test_cache_concurrent_processes(tmp_path, monkeypatch):
    """Two processes decode the same uncached entry at once: the lock makes one build, the other
    wait and read it (a slow build keeps both inside the race window)."""
    make_csv_gz(tmp_path)
    script = tmp_path / "racer.py"
    script.write_text(SLOW_BUILD)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env, cwd=tmp_path, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-800:]
        import kdbench.data.text as text_mod

        fast = text_mod.encode_labelled
        monkeypatch.setattr(text_mod, "encode_labelled", lambda *a, **k: (time.sleep(1.0), fast(*a, **k))[1])
        proc.stdin.write("go\n")
        proc.stdin.flush()
        s = load_dataset("imdb-5k", tmp_path, maxlen=20)
        mine = (s.info["cache"], hashlib.sha256(s.train.x.numpy().tobytes() + s.test.x.numpy().tobytes()).hexdigest())
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-800:]
    theirs = tuple(out.split())
    assert sorted([mine[0], theirs[0]]) == ["built", "hit"] and mine[1] == theirs[1]
    assert "Warning" not in err
    assert len({f.parent for f in _entry_files(tmp_path, "imdb-5k")}) == 1


# ---------------------------------------------------------------------------------------------
# errors, roots, table, download, CLI
# ---------------------------------------------------------------------------------------------

def test_unknown_dataset_did_you_mean():
    with pytest.raises(KdbenchError, match=r"unknown dataset 'mnsit'; did you mean 'mnist'"):
        load_dataset("mnsit")


def test_missing_data_message(tmp_path):
    (tmp_path / "mine").mkdir()  # an explicit root must exist (one that does not is its own error)
    with pytest.raises(KdbenchError) as e:
        load_dataset("mnist", tmp_path / "mine")
    msg = str(e.value)
    assert "\n" not in msg and "dataset 'mnist' not found" in msg
    assert str(tmp_path / "mine") in msg and str(tmp_path / "data") in msg  # the roots searched
    assert "kdbench data download mnist" in msg
    with pytest.raises(KdbenchError, match=r"aclImdb.*ai\.stanford\.edu"):
        load_dataset("imdb", tmp_path)


@pytest.mark.parametrize("damage,match", [("magic", "bad magic"), ("truncate", r"header \(12, 28, 28\) needs 9408 data bytes, found 9308"),
                                          ("gz", "cannot read")])
def test_corrupt_idx_names_the_file(tmp_path, damage, match):
    make_idx(tmp_path, gz=damage == "gz")
    f = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    if damage == "magic":
        f.write_bytes(b"\x01\x02" + f.read_bytes()[2:])
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[:-100])
    else:
        f = Path(str(f) + ".gz")
        f.write_bytes(f.read_bytes()[:40])
    with pytest.raises(KdbenchError, match=match) as e:
        load_dataset("mnist", tmp_path)
    assert str(f) in str(e.value) and "\n" not in str(e.value)


def test_data_roots_order(tmp_path, monkeypatch):
    monkeypatch.setenv("KDBENCH_DATA", f"{tmp_path / 'env1'}{os.pathsep}{tmp_path / 'env2'}")
    roots = data_roots(tmp_path / "arg")
    assert roots == [tmp_path / "arg", tmp_path / "env1", tmp_path / "env2", tmp_path / "data",
                     tmp_path / "home" / ".cache" / "kdbench" / "data", tmp_path / "no-system-datasets"]
    assert catalogue_mod.data_roots()[0] == tmp_path / "env1"


def test_search_order_and_env_root(tmp_path, monkeypatch):
    make_idx(tmp_path / "env", n_test=5)
    make_idx(tmp_path / "data", n_test=7)  # ./data, lower priority
    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path / "env"))
    assert len(load_dataset("mnist").test) == 5
    monkeypatch.delenv("KDBENCH_DATA")
    s = load_dataset("mnist")
    assert len(s.test) == 7 and s.info["root"] == str(tmp_path / "data")


def test_dataset_table(tmp_path):
    make_idx(tmp_path)
    make_csv_gz(tmp_path)
    rows = {r["name"]: r for r in dataset_table(tmp_path)}
    assert set(rows) == set(DATASETS.names()) >= {"mnist", "fashion-mnist", "cifar10", "cifar10-jpeg", "imdb",
                                                   "imdb-5k", "sst2", "movie-reviews", "mnist-5k", "digits"}
    assert rows["mnist"]["status"] == "found" and (rows["mnist"]["train"], rows["mnist"]["test"]) == (50, 12)
    assert rows["sst2"]["status"] == "missing" and "SST-2" in rows["sst2"]["how_to_get"]
    assert rows["imdb-5k"]["status"] == "found" and rows["imdb-5k"]["train"] is None  # not decoded to list it
    assert rows["digits"]["status"] == "found" and rows["digits"]["test"] == 359
    load_dataset("imdb-5k", tmp_path)
    rows = {r["name"]: r for r in dataset_table(tmp_path)}
    assert (rows["imdb-5k"]["train"], rows["imdb-5k"]["test"]) == (8, 2)  # now from the cache sidecar


class _FakeTorchvision:
    """Stands in for a torchvision dataset class: writes IDX files, or fails like a dead network."""

    fail = False

    def __init__(self, root, train=True, download=False):
        if self.fail:
            raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")
        if train:
            make_idx(Path(root), "MNIST/raw", gz=True)


def test_download_mocked(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd, "MNIST", _FakeTorchvision)
    where = download("mnist", tmp_path / "dl")
    assert where == tmp_path / "dl" / "MNIST" / "raw"
    assert load_dataset("mnist", tmp_path / "dl").sizes()["test"] == 12

    class Failing(_FakeTorchvision):
        fail = True

    monkeypatch.setattr(tvd, "MNIST", Failing)
    with pytest.raises(KdbenchError, match=r"download of 'mnist' into .* failed \(OSError: .*name resolution") as e:
        download("mnist", tmp_path / "dl2")
    assert "\n" not in str(e.value)
    with pytest.raises(KdbenchError, match="cannot download 'imdb-5k'"):
        download("imdb-5k", tmp_path)


def _cli(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kdbench")
    data_cmd.add_parser(p.add_subparsers(dest="command"))
    return p.parse_args(argv)


def test_cli_list_and_download(tmp_path, capsys, monkeypatch):
    make_idx(tmp_path)
    args = _cli(["data", "--data-root", str(tmp_path)])
    assert args.func is data_cmd.run and data_cmd.run(args) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("mnist "))
    assert "found" in line and "50" in line and str(tmp_path / "MNIST" / "raw") in line
    assert "kdbench data download cifar10" in out
    assert data_cmd.run(_cli(["data", "list", "--long"])) == 0
    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd, "MNIST", _FakeTorchvision)
    assert data_cmd.run(_cli(["data", "download", "mnist", "--data-root", str(tmp_path / "new")])) == 0
    assert "ready at" in capsys.readouterr().out
    with pytest.raises(KdbenchError, match="did you mean"):
        data_cmd.run(_cli(["data", "download", "fashion-mnst"]))


# ---------------------------------------------------------------------------------------------
# real data (KDBENCH_DATA; default cache, so repeated runs are fast)
# ---------------------------------------------------------------------------------------------

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _pool_counts(s) -> list[int]:
    return torch.bincount(torch.cat([s.train.y, s.val.y]), minlength=s.spec.num_classes).tolist()


@pytest.mark.realdata
def test_real_mnist(data_root):
    s = load_dataset("mnist", data_root)
    assert s.sizes() == {"train": 54000, "val": 6000, "test": 10000}
    assert torch.bincount(s.test.y).tolist() == MNIST_TEST_COUNTS
    assert s.train.x.shape[1:] == (1, 28, 28) and 0.0 == float(s.train.x.min()) and float(s.train.x.max()) == 1.0
    assert abs(float(s.test.x.mean()) - 0.1325) < 0.001  # the well-known MNIST test mean pixel


@pytest.mark.realdata
def test_real_fashion_mnist(data_root):
    s = load_dataset("fashion-mnist", data_root)
    assert len(s.train) + len(s.val) == 60000 and len(s.test) == 10000
    assert _pool_counts(s) == [6000] * 10 and torch.bincount(s.test.y).tolist() == [1000] * 10


@pytest.mark.realdata
def test_real_cifar10_jpeg(data_root):
    s = load_dataset("cifar10-jpeg", data_root)
    assert s.sizes() == {"train": 45000, "val": 5000, "test": 10000} and s.spec.input_shape == (3, 32, 32)
    assert _pool_counts(s) == [5000] * 10 and torch.bincount(s.test.y).tolist() == [1000] * 10
    mean = (s.train.x.sum(dim=(0, 2, 3), dtype=torch.float64) + s.val.x.sum(dim=(0, 2, 3), dtype=torch.float64)) / (50000 * 1024)
    assert torch.allclose(mean, torch.tensor([0.4913, 0.4821, 0.4465], dtype=torch.float64), atol=6e-4)  # data/README.md


@pytest.mark.realdata
def test_real_imdb_5k(data_root):
    s = load_dataset("imdb-5k", data_root)
    assert s.sizes() == {"train": 3600, "val": 400, "test": 1000}
    assert _pool_counts(s)[1] + int(s.test.y.sum()) == 2517  # positives in the whole CSV
    assert s.spec.vocab_size == 5000 and int(s.train.x.max()) == 4999


@pytest.mark.realdata
def test_real_sst2(data_root):
    s = load_dataset("sst2", data_root, maxlen=60)
    assert len(s.train) + len(s.val) == 67349 and len(s.test) == 1821
    assert _pool_counts(s) == [29780, 37569]
    assert (s.train.x[:, 0] == 0).all()  # SST sentences are short: the front is padding


@pytest.mark.realdata
def test_real_movie_reviews(data_root):
    s = load_dataset("movie-reviews", data_root)
    assert len(s.train) + len(s.val) + len(s.test) == 2000 and len(s.test) == 400
    assert sum(_pool_counts(s)) + len(s.test) == 2000
    assert _pool_counts(s)[1] + int(s.test.y.sum()) == 1000


@pytest.mark.realdata
def test_real_packaged_datasets():
    m = load_dataset("mnist-5k")
    assert m.sizes() == {"train": 3600, "val": 400, "test": 1000}
    assert (torch.tensor(_pool_counts(m)) + torch.bincount(m.test.y)).tolist() == [500] * 10
    d = load_dataset("digits")
    assert len(d.train) + len(d.val) + len(d.test) == 1797


@pytest.mark.realdata
def test_real_table(data_root):
    rows = {r["name"]: r for r in dataset_table(data_root)}
    for name in ("mnist", "fashion-mnist", "cifar10-jpeg", "imdb-5k", "sst2", "movie-reviews", "mnist-5k", "digits"):
        assert rows[name]["status"] == "found", name
    assert (rows["mnist"]["train"], rows["mnist"]["test"]) == (60000, 10000)
