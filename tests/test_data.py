"""Tests of sslit.data: tfds round trips, batching semantics, bad data, no network.

Oracles: files written here by independent code (IDX .gz via struct/gzip, PNGs via
PIL, a tfds data set with PNG-encoded images), scikit-learn's digits scaled here,
the published Fashion-MNIST facts (6,000 images per class, pixel mean 0.2860 and
std 0.3530), and set arithmetic on example indices encoded in the pixels.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import socket
import struct

import numpy as np
import pytest

from sslit import data

REAL_DIR = pathlib.Path(data.FASHION_MNIST_DIR)


# ----------------------------------------------------------------------------
# No network anywhere in this file.
# ----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  import tensorflow_datasets as tfds

  calls = []

  def refuse(*args, **kwargs):
    calls.append(args)
    raise AssertionError("network access attempted")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  for fn in ("download", "download_and_extract", "download_kaggle_data", "extract"):
    if hasattr(tfds.download.DownloadManager, fn):
      monkeypatch.setattr(tfds.download.DownloadManager, fn, refuse)
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  yield
  assert not calls, f"network access attempted: {calls}"


# ----------------------------------------------------------------------------
# Writers (independent of sslit.data)
# ----------------------------------------------------------------------------


def write_idx(path: pathlib.Path, array: np.ndarray, *, truncate: int = 0,
              gz_truncate: int = 0) -> None:
  raw = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  raw += np.ascontiguousarray(array, np.uint8).tobytes()
  if truncate:
    raw = raw[:-truncate]
  comp = gzip.compress(raw)
  if gz_truncate:
    comp = comp[:-gz_truncate]
  path.write_bytes(comp)


def write_fashion(directory: pathlib.Path, n_train=40, n_test=20, seed=0, **overrides):
  directory.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  arrays = {
      "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), np.uint8),
      "train-labels-idx1-ubyte.gz": rng.integers(0, 10, (n_train,), np.uint8),
      "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), np.uint8),
      "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, (n_test,), np.uint8),
  }
  arrays.update({k: v for k, v in overrides.items() if isinstance(v, np.ndarray)})
  for name, array in arrays.items():
    write_idx(directory / name, array)
  return arrays


def index_dataset(n: int, num_classes: int = 3) -> data.Dataset:
  """Example i carries i in its pixels: [0, 0, 0] = i % 256, [0, 1, 0] = i // 256."""
  images = np.zeros((n, 2, 2, 1), np.uint8)
  images[:, 0, 0, 0] = np.arange(n) % 256
  images[:, 0, 1, 0] = np.arange(n) // 256
  return data.from_arrays(images, np.arange(n) % num_classes, num_classes=num_classes)


def ids(batch) -> np.ndarray:
  img = batch["image"].astype(np.int64)
  return img[:, 0, 0, 0] + 256 * img[:, 0, 1, 0]


# ----------------------------------------------------------------------------
# Fashion-MNIST builder on generated IDX files
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
  src = tmp_path_factory.mktemp("idx")
  arrays = write_fashion(src)
  data_dir = tmp_path_factory.mktemp("tfds")
  return src, data_dir, arrays


def test_generated_idx_round_trip(generated):
  src, data_dir, arrays = generated
  for split, prefix in (("train", "train"), ("test", "t10k")):
    ds = data.load("fashion_mnist", split, data_dir=data_dir, source_dir=src)
    images = arrays[f"{prefix}-images-idx3-ubyte.gz"]
    labels = arrays[f"{prefix}-labels-idx1-ubyte.gz"]
    assert len(ds) == len(images) and ds.image_shape == (28, 28, 1)
    assert ds.num_classes == 10 and ds.class_names[9] == "Ankle boot"
    assert (data_dir / "sslit_fashion_mnist" / "1.0.0" / "dataset_info.json").is_file()
    got_x, got_y = ds.get(np.arange(len(ds))[::-1])
    np.testing.assert_array_equal(got_x[..., 0], images[::-1])
    np.testing.assert_array_equal(got_y, labels[::-1])
    assert got_x.dtype == np.uint8 and got_y.dtype == np.int32


def test_streaming_reads_equal_cached_reads(generated):
  src, data_dir, arrays = generated
  streamed = data.load("fashion_mnist", "train", data_dir=data_dir, source_dir=src,
                       in_memory=False)
  assert not streamed.in_memory
  idx = np.array([3, 0, 3, 39])
  x, y = streamed.get(idx)
  np.testing.assert_array_equal(x[..., 0], arrays["train-images-idx3-ubyte.gz"][idx])
  np.testing.assert_array_equal(y, arrays["train-labels-idx1-ubyte.gz"][idx])


def test_built_once_then_read_from_data_dir(generated, tmp_path):
  src, data_dir, arrays = generated
  data.load("fashion_mnist", "test", data_dir=data_dir, source_dir=src)
  # The source files are no longer needed: the prepared data set is reused.
  ds = data.load("fashion_mnist", "test", data_dir=data_dir, source_dir=tmp_path / "none")
  np.testing.assert_array_equal(ds.get([0])[0][0, ..., 0],
                                arrays["t10k-images-idx3-ubyte.gz"][0])


def test_tfds_split_slicing(generated):
  src, data_dir, arrays = generated
  ds = data.load("fashion_mnist", "train[:25%]", data_dir=data_dir, source_dir=src)
  assert len(ds) == 10
  np.testing.assert_array_equal(ds.get(np.arange(10))[0][..., 0],
                                arrays["train-images-idx3-ubyte.gz"][:10])
  with pytest.raises(ValueError, match="no split 'validation'"):
    data.load("fashion_mnist", "validation", data_dir=data_dir, source_dir=src)


def test_uncompressed_idx_files_accepted(tmp_path):
  rng = np.random.default_rng(1)
  x = rng.integers(0, 256, (5, 28, 28), np.uint8)
  raw = bytes([0, 0, 8, 3]) + struct.pack(">3I", 5, 28, 28) + x.tobytes()
  (tmp_path / "train-images-idx3-ubyte").write_bytes(raw)
  (tmp_path / "train-labels-idx1-ubyte").write_bytes(
      bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + bytes([1, 2, 3, 4, 5]))
  images, labels = data.read_fashion_mnist(tmp_path, "train")
  np.testing.assert_array_equal(images[..., 0], x)
  np.testing.assert_array_equal(labels, [1, 2, 3, 4, 5])


# ----------------------------------------------------------------------------
# Bad Fashion-MNIST files
# ----------------------------------------------------------------------------


def test_missing_files_name_the_debian_package(tmp_path):
  with pytest.raises(data.DatasetNotFoundError,
                     match="apt-get install dataset-fashion-mnist") as e:
    data.load("fashion_mnist", "train", data_dir=tmp_path / "tfds",
              source_dir=tmp_path / "absent")
  assert "train-images-idx3-ubyte.gz" in str(e.value)
  assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("case, match", [
    ("gz_truncated", "train-images-idx3-ubyte.gz: cannot be decompressed"),
    ("data_truncated", "train-images-idx3-ubyte.gz: IDX file truncated"),
    ("wrong_shape", "train-images-idx3-ubyte.gz: images have shape \\(27, 28\\)"),
    ("empty", "train-images-idx3-ubyte.gz: the train split is empty"),
    ("label_range", "train-labels-idx1-ubyte.gz: label 10 at index 7 is out of range"),
    ("count_mismatch", "has 40 images but .*train-labels-idx1-ubyte.gz has 39"),
    ("not_idx", "t10k-labels-idx1-ubyte.gz: not an IDX file"),
])
def test_bad_idx_files(tmp_path, case, match):
  src = tmp_path / "src"
  write_fashion(src)
  rng = np.random.default_rng(2)
  img = src / "train-images-idx3-ubyte.gz"
  if case == "gz_truncated":
    write_idx(img, rng.integers(0, 256, (40, 28, 28), np.uint8), gz_truncate=100)
  elif case == "data_truncated":
    write_idx(img, rng.integers(0, 256, (40, 28, 28), np.uint8), truncate=5)
  elif case == "wrong_shape":
    write_idx(img, rng.integers(0, 256, (40, 27, 28), np.uint8))
  elif case == "empty":
    write_idx(img, np.zeros((0, 28, 28), np.uint8))
  elif case == "label_range":
    labels = np.zeros(40, np.uint8)
    labels[7] = 10
    write_idx(src / "train-labels-idx1-ubyte.gz", labels)
  elif case == "count_mismatch":
    write_idx(src / "train-labels-idx1-ubyte.gz", np.zeros(39, np.uint8))
  elif case == "not_idx":
    (src / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"hello world"))
  data_dir = tmp_path / "tfds"
  with pytest.raises(ValueError, match=match):
    data.load("fashion_mnist", "train", data_dir=data_dir, source_dir=src)
  # Nothing half-built is left behind: a later build with good files succeeds.
  assert not (data_dir / "sslit_fashion_mnist" / "1.0.0" / "dataset_info.json").exists()
  write_fashion(src)
  assert len(data.load("fashion_mnist", "train", data_dir=data_dir, source_dir=src)) == 40


def test_corrupt_prepared_files_name_the_file(tmp_path):
  src = tmp_path / "src"
  write_fashion(src, n_train=200)
  data_dir = tmp_path / "tfds"
  data.build_fashion_mnist(data_dir, source_dir=src)
  (record,) = (data_dir / "sslit_fashion_mnist" / "1.0.0").glob("*train.array_record*")
  record.write_bytes(record.read_bytes()[:len(record.read_bytes()) // 2])
  with pytest.raises(ValueError, match="sslit_fashion_mnist-train.array_record"):
    data.load("fashion_mnist", "train", data_dir=data_dir, source_dir=src).cache()


# ----------------------------------------------------------------------------
# The real Fashion-MNIST (Debian's dataset-fashion-mnist), when installed
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory):
  if not (REAL_DIR / "train-images-idx3-ubyte.gz").is_file():
    pytest.skip("dataset-fashion-mnist is not installed")
  data_dir = tmp_path_factory.mktemp("real_tfds")
  return (data.load("fashion_mnist", "train", data_dir=data_dir),
          data.load("fashion_mnist", "test", data_dir=data_dir))


def test_real_fashion_mnist_counts_and_histogram(real):
  train, test = real
  assert (len(train), len(test)) == (60_000, 10_000)
  assert train.in_memory and test.in_memory
  _, y_train = train.get(np.arange(len(train)))
  _, y_test = test.get(np.arange(len(test)))
  np.testing.assert_array_equal(np.bincount(y_train, minlength=10), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(y_test, minlength=10), [1000] * 10)


def test_real_fashion_mnist_pixels_and_stats(real):
  train, test = real
  with gzip.open(REAL_DIR / "t10k-images-idx3-ubyte.gz") as f:
    raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
  idx = np.array([0, 1, 4321, 9999])
  np.testing.assert_array_equal(test.get(idx)[0][..., 0], raw[idx])
  # Published statistics of the train split (e.g. the Fashion-MNIST benchmarks).
  np.testing.assert_allclose(train.mean, [0.2860], atol=1e-4)
  np.testing.assert_allclose(train.std, [0.3530], atol=1e-4)
  np.testing.assert_array_equal(test.mean, train.mean)


# ----------------------------------------------------------------------------
# digits
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("digits")
  return (data.load("digits", "train", data_dir=data_dir),
          data.load("digits", "test", data_dir=data_dir))


def test_digits_round_trip(digits):
  from sklearn.datasets import load_digits
  train, test = digits
  bunch = load_digits()
  expect = np.rint(bunch.images * 255 / 16).astype(np.uint8)
  assert (len(train), len(test)) == (1497, 300)
  assert train.image_shape == (8, 8, 1)
  x = np.concatenate([train.get(np.arange(1497))[0], test.get(np.arange(300))[0]])
  y = np.concatenate([train.get(np.arange(1497))[1], test.get(np.arange(300))[1]])
  # Train and test partition the 1797 digits: match every image to its source.
  key = lambda a: [r.tobytes() for r in a.reshape(len(a), -1)]  # noqa: E731
  source = {}
  for k, label in zip(key(expect), bunch.target):
    source.setdefault(k, set()).add(int(label))
  assert sorted(key(x)) == sorted(key(expect))
  assert all(int(label) in source[k] for k, label in zip(key(x), y))
  assert x.max() == 255 and x.min() == 0


def test_digits_split_is_deterministic(digits, tmp_path):
  train, _ = digits
  again = data.load("digits", "train", data_dir=tmp_path)
  np.testing.assert_array_equal(again.get(np.arange(1497))[0],
                                train.get(np.arange(1497))[0])


def test_mean_std_are_train_pixel_statistics(digits):
  train, test = digits
  x = train.get(np.arange(len(train)))[0].astype(np.float64) / 255
  np.testing.assert_allclose(train.mean, [x.mean()], rtol=1e-5)
  np.testing.assert_allclose(train.std, [x.std()], rtol=1e-5)
  np.testing.assert_allclose(test.mean, train.mean)
  np.testing.assert_allclose(test.std, train.std)


# ----------------------------------------------------------------------------
# batch_iterator
# ----------------------------------------------------------------------------


def take(it, n):
  return [next(it) for _ in range(n)]


def test_epochs_are_permutations_and_deterministic():
  ds = index_dataset(23)
  assert data.steps_per_epoch(ds, 5) == 4
  batches = take(data.batch_iterator(ds, 5, seed=3), 8)
  again = take(data.batch_iterator(ds, 5, seed=3), 8)
  other = take(data.batch_iterator(ds, 5, seed=4), 8)
  for a, b in zip(batches, again):
    for k in ("image", "label", "mask"):
      np.testing.assert_array_equal(a[k], b[k])
  first = np.concatenate([ids(b) for b in batches[:4]])
  second = np.concatenate([ids(b) for b in batches[4:]])
  assert len(set(first)) == 20 and len(set(second)) == 20  # 3 dropped per epoch
  assert not np.array_equal(first, second)  # epochs reshuffle
  assert not np.array_equal(first, np.concatenate([ids(b) for b in other[:4]]))
  np.testing.assert_array_equal(first, data.epoch_permutation(23, seed=3, epoch=0)[:20])
  for b in batches:
    np.testing.assert_array_equal(b["label"], ids(b) % 3)
    assert b["image"].dtype == np.uint8 and b["label"].dtype == np.int32
    assert b["mask"].dtype == bool and b["mask"].all()


def test_no_shuffle_is_file_order():
  ds = index_dataset(12)
  got = np.concatenate([ids(b) for b in take(
      data.batch_iterator(ds, 4, shuffle=False), 6)])
  np.testing.assert_array_equal(got, np.tile(np.arange(12), 2))


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_resume_equals_uninterrupted(drop_remainder):
  ds = index_dataset(17)
  full = take(data.batch_iterator(ds, 4, seed=7, drop_remainder=drop_remainder), 15)
  for start in (1, 4, 5, 11):
    resumed = take(data.batch_iterator(ds, 4, seed=7, drop_remainder=drop_remainder,
                                       start_step=start), 15 - start)
    for a, b in zip(full[start:], resumed):
      for k in ("image", "label", "mask"):
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("process_count", [2, 4])
@pytest.mark.parametrize("drop_remainder", [True, False])
def test_host_shards_are_disjoint_and_cover_the_global_batch(process_count,
                                                             drop_remainder):
  ds = index_dataset(30)
  steps = 2 * data.steps_per_epoch(ds, 8, drop_remainder, process_count)
  glob = take(data.batch_iterator(ds, 8, seed=1, drop_remainder=drop_remainder), steps)
  hosts = [take(data.batch_iterator(ds, 8, seed=1, drop_remainder=drop_remainder,
                                    process_index=p, process_count=process_count),
                steps) for p in range(process_count)]
  for s in range(steps):
    parts = [h[s] for h in hosts]
    assert all(len(p["label"]) == 8 // process_count for p in parts)
    real = [ids(p)[p["mask"]] for p in parts]
    flat = np.concatenate(real)
    assert len(set(flat)) == len(flat)  # disjoint
    np.testing.assert_array_equal(flat, ids(glob[s])[glob[s]["mask"]])  # covering
    np.testing.assert_array_equal(
        np.concatenate([p["mask"] for p in parts]), glob[s]["mask"])


def test_padded_last_batch_masks():
  ds = index_dataset(10)
  assert data.steps_per_epoch(ds, 4, drop_remainder=False) == 3
  batches = take(data.batch_iterator(ds, 4, drop_remainder=False, shuffle=False), 3)
  np.testing.assert_array_equal(batches[2]["mask"], [True, True, False, False])
  np.testing.assert_array_equal(ids(batches[2])[:2], [8, 9])
  assert (batches[2]["image"][2:] == 0).all() and (batches[2]["label"][2:] == 0).all()
  assert batches[2]["image"].shape == (4, 2, 2, 1)
  host1 = take(data.batch_iterator(ds, 4, drop_remainder=False, shuffle=False,
                                   process_index=1, process_count=2), 3)
  assert not host1[2]["mask"].any() and host1[2]["image"].shape == (2, 2, 2, 1)
  # A single epoch visits every example exactly once.
  one = list(data.batch_iterator(ds, 4, drop_remainder=False, num_epochs=1))
  assert len(one) == 3
  np.testing.assert_array_equal(
      np.sort(np.concatenate([ids(b)[b["mask"]] for b in one])), np.arange(10))


def test_batching_argument_errors():
  ds = index_dataset(10)
  with pytest.raises(ValueError, match="divisible by process_count=3"):
    data.batch_iterator(ds, 4, process_count=3)
  with pytest.raises(ValueError, match="larger than the data set"):
    data.batch_iterator(ds, 16)
  with pytest.raises(ValueError, match="process_index must be in \\[0, 2\\)"):
    data.batch_iterator(ds, 4, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="start_step"):
    data.batch_iterator(ds, 4, start_step=-1)
  with pytest.raises(ValueError, match="batch_size must be a positive integer"):
    data.steps_per_epoch(ds, 0)
  with pytest.raises(IndexError, match="index 10 is out of range"):
    ds.get([0, 10])
  with pytest.raises(ValueError, match="rank 1"):
    ds.get(np.zeros((2, 2), int))


def test_from_arrays_checks_labels_and_emptiness():
  x = np.zeros((4, 2, 2, 1), np.uint8)
  with pytest.raises(ValueError, match="label 5 of example 2 is out of range \\[0, 3\\)"):
    data.from_arrays(x, np.array([0, 1, 5, 2]), num_classes=3)
  with pytest.raises(ValueError, match="is empty"):
    data.from_arrays(x[:0], np.zeros(0, int), num_classes=3)
  with pytest.raises(ValueError, match="uint8"):
    data.from_arrays(x.astype(np.float32), np.zeros(4, int), num_classes=3)


def test_unknown_name():
  with pytest.raises(ValueError, match="unknown data set 'mnist'"):
    data.load("mnist", "train")


# ----------------------------------------------------------------------------
# Prepared tfds data sets (cifar10 / imagenet2012), faked in a tmp data dir
# ----------------------------------------------------------------------------


def _fake_tfds(data_dir, name, version, images_by_split, labels_by_split, num_classes):
  import tensorflow_datasets as tfds
  from PIL import Image

  class Fake(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version(version)

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "id": tfds.features.Text(),
          "image": tfds.features.Image(
              shape=(None, None, 3) if name == "imagenet2012" else (32, 32, 3)),
          "label": tfds.features.ClassLabel(num_classes=num_classes)}),
          disable_shuffling=True)

    def _split_generators(self, dl_manager):
      return {s: self._generate_examples(s) for s in images_by_split}

    def _generate_examples(self, split):
      for i, (x, y) in enumerate(zip(images_by_split[split], labels_by_split[split])):
        yield i, {"id": str(i), "image": Image.fromarray(x), "label": int(y)}

  Fake.name = name
  Fake(data_dir=os.fspath(data_dir), file_format="array_record").download_and_prepare()


def test_prepared_cifar10_is_read(tmp_path):
  rng = np.random.default_rng(3)
  xs = {"train": rng.integers(0, 256, (12, 32, 32, 3), np.uint8),
        "test": rng.integers(0, 256, (6, 32, 32, 3), np.uint8)}
  ys = {"train": np.arange(12) % 10, "test": np.arange(6)}
  _fake_tfds(tmp_path, "cifar10", "3.0.2", xs, ys, 10)
  for split in ("train", "test"):
    ds = data.load("cifar10", split, data_dir=tmp_path)
    assert ds.image_shape == (32, 32, 3) and ds.num_classes == 10
    x, y = ds.get(np.arange(len(ds)))
    np.testing.assert_array_equal(x, xs[split])  # PNG is lossless
    np.testing.assert_array_equal(y, ys[split])
  ref = xs["train"].reshape(-1, 3).astype(np.float64) / 255
  np.testing.assert_allclose(ds.mean, ref.mean(0), rtol=1e-5)
  np.testing.assert_allclose(ds.std, ref.std(0), rtol=1e-5)


def test_prepared_imagenet_is_resized(tmp_path):
  rng = np.random.default_rng(4)
  xs = {"train": [rng.integers(0, 256, s + (3,), np.uint8) for s in
                  ((40, 60), (50, 30), (16, 16))]}
  _fake_tfds(tmp_path, "imagenet2012", "5.1.0", xs, {"train": [0, 1, 2]}, 1000)
  ds = data.load("imagenet2012", "train", data_dir=tmp_path, image_size=16)
  assert ds.image_shape == (16, 16, 3)
  x, y = ds.get([0, 1, 2])
  assert x.shape == (3, 16, 16, 3) and x.dtype == np.uint8
  np.testing.assert_array_equal(x[2], xs["train"][2])  # already 16x16: untouched
  np.testing.assert_array_equal(y, [0, 1, 2])
  np.testing.assert_allclose(ds.mean, [0.485, 0.456, 0.406])


def test_tfrecord_prepared_set_names_array_record(tmp_path):
  rng = np.random.default_rng(3)
  _fake_tfds(tmp_path, "cifar100", "3.0.2",
             {"train": rng.integers(0, 256, (2, 32, 32, 3), np.uint8)}, {"train": [0, 1]},
             100)
  info = tmp_path / "cifar100" / "3.0.2" / "dataset_info.json"
  text = info.read_text()
  assert '"array_record"' in text
  info.write_text(text.replace('"array_record"', '"tfrecord"'))
  with pytest.raises(data.DatasetNotFoundError,
                     match="stored as tfrecord.*--file_format=array_record"):
    data.load("cifar100", "train", data_dir=tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagenet2012"])
def test_unprepared_tfds_set_names_tfds_build(tmp_path, name):
  with pytest.raises(data.DatasetNotFoundError, match=f"tfds build {name} "):
    data.load(name, "train", data_dir=tmp_path)


# ----------------------------------------------------------------------------
# Image folders and Tiny-ImageNet
# ----------------------------------------------------------------------------


def _write_png(path, array):
  from PIL import Image
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)


@pytest.fixture
def folder(tmp_path):
  rng = np.random.default_rng(5)
  images = {}
  for split, n in (("train", 3), ("test", 2)):
    for cls in ("cat", "dog"):
      for i in range(n):
        x = rng.integers(0, 256, (6, 5, 3), np.uint8)
        p = tmp_path / split / cls / f"{i}.png"
        _write_png(p, x)
        images[p] = x
  return tmp_path, images


def test_folder_round_trip(folder):
  root, images = folder
  ds = data.load(f"folder:{root}", "train")
  assert ds.class_names == ("cat", "dog") and ds.image_shape == (6, 5, 3)
  x, y = ds.get(np.arange(len(ds)))
  want = [images[root / "train" / c / f"{i}.png"] for c in ("cat", "dog") for i in range(3)]
  np.testing.assert_array_equal(x, np.stack(want))
  np.testing.assert_array_equal(y, [0, 0, 0, 1, 1, 1])
  test = data.load(f"folder:{root}", "test")
  assert len(test) == 4
  ref = np.stack(want).reshape(-1, 3).astype(np.float64) / 255
  np.testing.assert_allclose(test.mean, ref.mean(0), rtol=1e-5)  # train statistics
  np.testing.assert_allclose(test.std, ref.std(0), rtol=1e-5)
  small = data.load(f"folder:{root}", "test", image_size=4)
  assert small.image_shape == (4, 4, 3) and small.get([0])[0].shape == (1, 4, 4, 3)


def test_folder_bad_data(folder):
  root, _ = folder
  _write_png(root / "train" / "dog" / "9.png", np.zeros((7, 5, 3), np.uint8))
  with pytest.raises(ValueError, match="dog/9.png: image has shape \\(7, 5, 3\\)"):
    data.load(f"folder:{root}", "train", in_memory=False).get(np.arange(7))
  (root / "train" / "dog" / "9.png").write_bytes(
      (root / "train" / "dog" / "0.png").read_bytes()[:40])
  with pytest.raises(ValueError, match="dog/9.png: cannot decode image"):
    data.load(f"folder:{root}", "train").cache()
  with pytest.raises(data.DatasetNotFoundError, match="no split directory"):
    data.load(f"folder:{root}", "val")
  (root / "empty" / "cat").mkdir(parents=True)
  with pytest.raises(ValueError, match="'empty' split .* has no images"):
    data.load(f"folder:{root}", "empty")
  (root / "test" / "cow").mkdir()
  with pytest.raises(ValueError, match="test/cow: class 'cow' is not one of"):
    data.load(f"folder:{root}", "test")
  with pytest.raises(data.DatasetNotFoundError, match="does not exist"):
    data.load(f"folder:{root}/nothing", "train")


def test_tiny_imagenet_layout(tmp_path):
  root = tmp_path / "tiny-imagenet-200"
  rng = np.random.default_rng(6)
  wnids = ["n02", "n01"]
  root.mkdir()
  (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
  for w in wnids:
    for i in range(2):
      _write_png(root / "train" / w / "images" / f"{w}_{i}.png",
                 rng.integers(0, 256, (8, 8) if w == "n01" else (8, 8, 3), np.uint8))
  _write_png(root / "val" / "images" / "val_0.png", rng.integers(0, 256, (8, 8, 3),
                                                                 np.uint8))
  (root / "val" / "val_annotations.txt").write_text("val_0.png\tn02\t0\t0\t8\t8\n")
  train = data.load("tiny_imagenet", "train", data_dir=tmp_path)
  assert len(train) == 4 and train.class_names == ("n01", "n02")
  assert train.image_shape == (8, 8, 3)  # grey-scale files are decoded to RGB
  grey = train.get([0])[0][0]
  np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
  np.testing.assert_array_equal(train.get(np.arange(4))[1], [0, 0, 1, 1])
  val = data.load("tiny_imagenet", "val", data_dir=tmp_path)
  np.testing.assert_array_equal(val.get([0])[1], [1])
  with pytest.raises(data.DatasetNotFoundError, match="tiny-imagenet-200.zip"):
    data.load("tiny_imagenet", "train", data_dir=tmp_path / "none")


def test_concurrent_builds_share_one_data_dir(tmp_path):
  import subprocess
  import sys
  src = tmp_path / "src"
  arrays = write_fashion(src, n_train=300)
  code = ("import sys; from sslit import data; "
          "ds = data.load('fashion_mnist', 'train', data_dir=sys.argv[1], "
          "source_dir=sys.argv[2]); print(int(ds.get([299])[1][0]))")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "tfds"), str(src)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
           for _ in range(2)]
  outs = [p.communicate(timeout=120) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err.decode()[-2000:]
    assert int(out.split()[-1]) == arrays["train-labels-idx1-ubyte.gz"][299]
  assert [d.name for d in (tmp_path / "tfds" / "sslit_fashion_mnist").iterdir()] == ["1.0.0"]
