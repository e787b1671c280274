"""On-disk formats and offline builders of the data sets that sslit can make itself.

The readers and builders behind :func:`sslit.data.load`: IDX files (Fashion-MNIST
from Debian's ``dataset-fashion-mnist`` package), scikit-learn's bundled 8x8
digits, the tfds builders that turn them into ``array_record`` data sets once
(under a file lock, so concurrent first uses build once), the raw-record reader of
those data sets, and image-file decoding for local folders. Nothing here downloads;
a missing source raises :class:`DatasetNotFoundError` naming what provides it.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import pathlib
import struct
import sys
import zlib

import numpy as np

__all__ = ["DatasetNotFoundError", "read_idx", "read_fashion_mnist",
           "build_fashion_mnist", "build_digits", "default_data_dir",
           "FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES"]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
    "Sneaker", "Bag", "Ankle boot")
_DIGITS_NUM_TEST = 300
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
APT_HINT = "sudo apt-get install dataset-fashion-mnist"


class DatasetNotFoundError(ValueError):
  """A data set is not present locally; the message names what provides it."""


# ----------------------------------------------------------------------------
# IDX files (Fashion-MNIST)
# ----------------------------------------------------------------------------


def read_idx(path: str | os.PathLike, *, ndim: int | None = None) -> np.ndarray:
  """Read an IDX file of unsigned bytes (``.gz`` compressed or not).

  Format (LeCun's MNIST): bytes ``00 00 08 d``, then ``d`` big-endian uint32
  dimensions, then the row-major uint8 data.

  Args:
    path: the file.
    ndim: the required number of dimensions (3 for images, 1 for labels).

  Returns:
    A read-only uint8 array with the file's dimensions.

  Raises:
    FileNotFoundError: no such file.
    ValueError: a truncated, corrupt or mis-shaped file (the message names it).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such file.")
  try:
    if path.suffix == ".gz":
      with gzip.open(path, "rb") as f:
        raw = f.read()
    else:
      raw = path.read_bytes()
  except (OSError, EOFError, zlib.error) as e:
    raise ValueError(f"{path}: cannot be decompressed ({e}); the file is truncated "
                     f"or corrupt.") from e
  if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
    raise ValueError(f"{path}: not an IDX file of unsigned bytes (first bytes "
                     f"{raw[:4].hex() or 'empty'}, expected 000008..).")
  d = raw[3]
  if ndim is not None and d != ndim:
    raise ValueError(f"{path}: IDX file has {d} dimensions, expected {ndim}.")
  header = 4 + 4 * d
  if len(raw) < header:
    raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes).")
  dims = struct.unpack(f">{d}I", raw[4:header])
  size = math.prod(dims)
  if len(raw) - header != size:
    what = "truncated" if len(raw) - header < size else "has trailing bytes"
    raise ValueError(f"{path}: IDX file {what}: header says shape {dims} "
                     f"({size} bytes of data), found {len(raw) - header}.")
  return np.frombuffer(raw, np.uint8, count=size, offset=header).reshape(dims)


def _idx_path(source_dir: pathlib.Path, name: str) -> pathlib.Path:
  path = source_dir / name
  if not path.exists() and (source_dir / name[:-3]).exists():
    return source_dir / name[:-3]  # uncompressed copy
  return path


def read_fashion_mnist(source_dir: str | os.PathLike = FASHION_MNIST_DIR,
                       split: str = "train") -> tuple[np.ndarray, np.ndarray]:
  """Read and check one Fashion-MNIST split from its IDX files.

  Returns:
    ``(images uint8 [N, 28, 28, 1], labels uint8 [N])``.

  Raises:
    DatasetNotFoundError: a file is missing (names ``apt-get install
      dataset-fashion-mnist``).
    ValueError: truncated/corrupt files, images not 28x28, an empty split, image
      and label counts that differ, labels outside [0, 10); the message names the
      file.
  """
  source_dir = pathlib.Path(source_dir)
  if split not in FASHION_MNIST_FILES:
    raise ValueError(f"unknown Fashion-MNIST split {split!r}; one of "
                     f"{sorted(FASHION_MNIST_FILES)}.")
  image_path, label_path = (_idx_path(source_dir, f) for f in FASHION_MNIST_FILES[split])
  missing = [str(p) for p in (image_path, label_path) if not p.is_file()]
  if missing:
    raise DatasetNotFoundError(
        f"Fashion-MNIST file(s) not found: {', '.join(missing)}. Install them with "
        f"`{APT_HINT}` (Debian/Ubuntu; files under {FASHION_MNIST_DIR}), or pass "
        f"source_dir= a directory holding the four IDX .gz files. sslit never "
        f"downloads.")
  images = read_idx(image_path, ndim=3)
  labels = read_idx(label_path, ndim=1)
  if images.shape[1:] != (28, 28):
    raise ValueError(f"{image_path}: images have shape {images.shape[1:]}, "
                     f"Fashion-MNIST images are 28x28.")
  if len(images) == 0:
    raise ValueError(f"{image_path}: the {split} split is empty (0 images).")
  if len(images) != len(labels):
    raise ValueError(f"{image_path} has {len(images)} images but {label_path} has "
                     f"{len(labels)} labels.")
  if labels.max() >= 10:
    i = int(np.argmax(labels >= 10))
    raise ValueError(f"{label_path}: label {int(labels[i])} at index {i} is out of "
                     f"range [0, 10).")
  return images[..., None], labels


def _digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """scikit-learn's digits as uint8 [N, 8, 8, 1], split 1497 train / 300 test."""
  from sklearn.datasets import load_digits  # bundled with scikit-learn, no download
  bunch = load_digits()
  images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = bunch.target.astype(np.int64)
  perm = np.random.default_rng(0).permutation(len(images))
  test = np.sort(perm[:_DIGITS_NUM_TEST])
  train = np.sort(perm[_DIGITS_NUM_TEST:])
  return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


# ----------------------------------------------------------------------------
# tfds builders (array_record, no TensorFlow)
# ----------------------------------------------------------------------------


def default_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """``data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets`` ("" = unset)."""
  if data_dir is not None and os.fspath(data_dir) != "":
    return pathlib.Path(data_dir).expanduser()
  env = os.environ.get("TFDS_DATA_DIR")
  return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / "tensorflow_datasets"


_BUILDER_CLASSES: dict[str, type] = {}


def builder_classes() -> dict[str, type]:
  """The tfds builder classes (defined on first use: importing tfds costs 0.2 s)."""
  if _BUILDER_CLASSES:
    return _BUILDER_CLASSES
  import tensorflow_datasets as tfds

  class _ArrayBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Writes in-memory uint8 arrays as raw tensors, in file order."""

    IMAGE_SHAPE: tuple[int, int, int] = (0, 0, 0)
    CLASS_NAMES: tuple[str, ...] = ()
    DESCRIPTION = ""

    def __init__(self, *, arrays_fn, **kwargs):
      self._arrays_fn = arrays_fn
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, description=self.DESCRIPTION,
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Tensor(shape=self.IMAGE_SHAPE, dtype=np.uint8,
                                            encoding=tfds.features.Encoding.BYTES),
              "label": tfds.features.ClassLabel(names=list(self.CLASS_NAMES)),
          }),
          supervised_keys=("image", "label"), disable_shuffling=True)

    def _split_generators(self, dl_manager):
      del dl_manager  # never used: nothing is downloaded
      arrays = self._arrays_fn()  # read and checked before anything is written
      return {split: self._generate_examples(*arrays[split]) for split in arrays}

    def _generate_examples(self, images, labels):
      for i in range(len(images)):
        yield i, {"image": images[i], "label": int(labels[i])}

  class SslitFashionMnist(_ArrayBuilder, skip_registration=True):
    name = "sslit_fashion_mnist"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Fashion-MNIST from Debian's IDX files, raw uint8."}
    IMAGE_SHAPE = (28, 28, 1)
    CLASS_NAMES = FASHION_MNIST_CLASSES
    DESCRIPTION = ("Fashion-MNIST (Xiao, Rasul and Vollgraf 2017), 60,000 train and "
                   "10,000 test 28x28 grey images of 10 clothing classes, built "
                   "offline from the IDX files of Debian's dataset-fashion-mnist.")

  class SslitDigits(_ArrayBuilder, skip_registration=True):
    name = "sslit_digits"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "scikit-learn digits, 1497/300 split by seed 0."}
    IMAGE_SHAPE = (8, 8, 1)
    CLASS_NAMES = tuple(str(i) for i in range(10))
    DESCRIPTION = ("scikit-learn's bundled optical digits (UCI), 1797 8x8 images "
                   "scaled from 0..16 to 0..255; test = 300 examples chosen by "
                   "np.random.default_rng(0).permutation, train = the rest.")

  _BUILDER_CLASSES.update(fashion_mnist=SslitFashionMnist, digits=SslitDigits)
  return _BUILDER_CLASSES


@contextlib.contextmanager
def _file_lock(path: pathlib.Path):
  """An exclusive advisory lock (POSIX ``flock``), so that processes sharing a data
  dir (several hosts' processes on one machine, parallel test runs) build once."""
  try:
    import fcntl
  except ImportError:  # not POSIX: no lock
    yield
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _build(kind: str, arrays_fn, data_dir: str | os.PathLike | None):
  """Return the prepared builder, building it (once, offline) if needed."""
  cls = builder_classes()[kind]
  root = default_data_dir(data_dir)
  builder = cls(arrays_fn=arrays_fn, data_dir=os.fspath(root), file_format="array_record")
  if not builder.is_prepared():
    import tensorflow_datasets as tfds
    with _file_lock(root / f".{cls.name}.lock"):
      builder = cls(arrays_fn=arrays_fn, data_dir=os.fspath(root),
                    file_format="array_record")
      if not builder.is_prepared():  # another process may have built it meanwhile
        # tfds's own banner says "Downloading and preparing": nothing is downloaded.
        print(f"sslit.data: building {cls.name} offline into {root} (once; seconds)",
              file=sys.stderr)
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


def build_fashion_mnist(data_dir: str | os.PathLike | None = None, *,
                        source_dir: str | os.PathLike = FASHION_MNIST_DIR):
  """Build (once) Fashion-MNIST into ``<data_dir>/sslit_fashion_mnist/1.0.0``.

  Reads the IDX files under ``source_dir`` (Debian's ``dataset-fashion-mnist``),
  checks them, and writes both splits as array_record files through tfds; a data
  dir that already holds the prepared data set is reused as is (delete
  ``<data_dir>/sslit_fashion_mnist`` to rebuild). Never downloads.

  Returns:
    The prepared tfds builder.
  """
  source_dir = pathlib.Path(source_dir)

  def arrays():
    return {s: read_fashion_mnist(source_dir, s) for s in ("train", "test")}

  return _build("fashion_mnist", arrays, data_dir)


def build_digits(data_dir: str | os.PathLike | None = None):
  """Build (once) scikit-learn's digits into ``<data_dir>/sslit_digits/1.0.0``."""
  return _build("digits", _digits_arrays, data_dir)


def split_files(builder, split: str) -> list[str]:
  base = split.split("[")[0]
  try:
    return [os.fspath(p) for p in builder.info.splits[base].filepaths]
  except (KeyError, ValueError):
    return [os.fspath(builder.data_dir)]


def get_records(source, idx: np.ndarray, files: list[str], *, fix: str) -> list:
  """``source.__getitems__(idx)``; a failure names the files and ``fix``."""
  try:
    return source.__getitems__(idx.tolist())
  except Exception as e:  # pylint: disable=broad-except  (any reader error)
    raise ValueError(f"{', '.join(files)}: cannot read records ({type(e).__name__}: "
                     f"{e}); the files are truncated or corrupt: {fix}.") from e


def raw_tensor_reader(source, shape: tuple[int, int, int], files: list[str]):
  """Reads sslit's own records (uint8 image bytes + int64 label) without tfds decoding.

  The image is a ``tfds.features.Tensor(encoding=BYTES)``: one bytes value holding
  the row-major pixels, so parsing the ``tf.train.Example`` proto and one
  ``np.frombuffer`` is all the decoding there is (about 5x faster than the generic
  per-feature decoder, which matters for filling the in-memory cache).
  """
  from tensorflow_datasets.proto import tf_example_pb2
  parse = tf_example_pb2.Example.FromString
  size = math.prod(shape)

  def read(idx: np.ndarray):
    records = get_records(source, idx, files, fix="delete the data set directory and "
                          "load again to rebuild it")
    images = np.empty((len(idx), size), np.uint8)
    labels = np.empty((len(idx),), np.int64)
    for j, record in enumerate(records):
      feature = parse(record).features.feature
      pixels = feature["image"].bytes_list.value
      if len(pixels) != 1 or len(pixels[0]) != size:
        raise ValueError(f"{', '.join(files)}: record {int(idx[j])} does not hold a "
                         f"{shape} uint8 image.")
      images[j] = np.frombuffer(pixels[0], np.uint8)
      labels[j] = feature["label"].int64_list.value[0]
    return images.reshape(len(idx), *shape), labels

  return read


def resize_center_crop(image: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
  """Resize the shorter side to fit ``shape`` (bilinear) and crop the centre."""
  from PIL import Image
  h, w = shape[:2]
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  scale = max(h / pil.height, w / pil.width)
  size = (max(w, round(pil.width * scale)), max(h, round(pil.height * scale)))
  pil = pil.resize(size, Image.BILINEAR)
  left, top = (size[0] - w) // 2, (size[1] - h) // 2
  out = np.asarray(pil.crop((left, top, left + w, top + h)))
  return out.reshape(shape) if out.ndim == 2 else out


def decode_image(path: str, shape: tuple[int, int, int], resize: bool) -> np.ndarray:
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as pil:
      pil = pil.convert("L" if shape[-1] == 1 else "RGB")
      image = np.asarray(pil)
  except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
    raise ValueError(f"{path}: cannot decode image ({e}); the file is truncated or "
                     f"not an image.") from e
  if image.ndim == 2:
    image = image[..., None]
  if image.shape != shape:
    if not resize:
      raise ValueError(f"{path}: image has shape {image.shape}, expected {shape} "
                       f"(the first image's); pass image_size= to resize every image.")
    image = resize_center_crop(image, shape)
  return image


def list_images(directory: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in directory.iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
