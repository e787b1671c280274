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


def _decode(source, shape: tuple[int, int, int], resize: bool, where: str,
            what: str, hint: str) -> np.ndarray:
  """Open ``source`` (a path or a file object) with PIL, to ``shape``."""
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(source) as pil:
      image = np.asarray(pil.convert("L" if shape[-1] == 1 else "RGB"))
  except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
    raise ValueError(f"{where}: cannot decode {what} ({e}); {hint}") from e
  if image.ndim == 2:
    image = image[..., None]
  if image.shape != shape:
    if not resize:
      raise ValueError(f"{where}: image has shape {image.shape}, expected {shape}; "
                       f"pass image_size= to resize every image.")
    image = resize_center_crop(image, shape)
  return image


def decode_image(path: str, shape: tuple[int, int, int], resize: bool) -> np.ndarray:
  """Decode an image file to ``shape`` (grey or RGB by ``shape[-1]``)."""
  return _decode(path, shape, resize, path, "image",
                 "the file is truncated or not an image.")


def list_images(directory: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in directory.iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


# ----------------------------------------------------------------------------
# Records for worker processes (grain): picklable sources and decoders
# ----------------------------------------------------------------------------


class ExampleRecords:
  """Random access to the serialized ``tf.train.Example`` records of a tfds split.

  Picklable (the opened ``data_source`` is not pickled but reopened where it is
  used), so worker processes can read the same split; ``repr`` names the split, and
  grain compares it when an iterator state is restored.

  Args:
    builder_dir: the prepared version directory (``<data_dir>/<name>/<version>``).
    split: the split, tfds slicing allowed.
  """

  def __init__(self, builder_dir: str | os.PathLike, split: str):
    self.builder_dir = os.fspath(builder_dir)
    self.split = split
    self._opened = None

  def _source(self):
    if self._opened is None:
      import tensorflow_datasets as tfds
      from tensorflow_datasets.core import decode
      builder = tfds.builder_from_directory(self.builder_dir)
      self._opened = builder.as_data_source(
          split=self.split, deserialize_method=decode.DeserializeMethod.RAW_BYTES)
    return self._opened

  def __getstate__(self):
    return {"builder_dir": self.builder_dir, "split": self.split, "_opened": None}

  def __len__(self) -> int:
    return len(self._source())

  def __getitem__(self, index: int) -> bytes:
    return self._source()[int(index)]

  def __getitems__(self, indices) -> list:
    return self._source().__getitems__([int(i) for i in indices])

  def __repr__(self) -> str:
    return f"ExampleRecords({self.builder_dir!r}, split={self.split!r})"


class DecodeExample:
  """``tf.train.Example`` bytes → ``(image uint8 [H, W, C], label)``.

  Reads the ``image`` feature as raw pixels (sslit's own Tensor-encoded sets,
  ``raw=True``) or as an encoded image (JPEG/PNG, decoded by PIL, converted to
  grey or RGB by ``shape[-1]``, resized and centre-cropped to ``shape`` when
  ``resize``), and the ``label`` feature as an int.
  """

  def __init__(self, shape: tuple[int, int, int], *, raw: bool = False,
               resize: bool = True, where: str = ""):
    self.shape = tuple(int(d) for d in shape)
    self.raw = bool(raw)
    self.resize = bool(resize)
    self.where = where

  def __call__(self, record: bytes) -> tuple[np.ndarray, int]:
    from tensorflow_datasets.proto import tf_example_pb2
    feature = tf_example_pb2.Example.FromString(record).features.feature
    payload = feature["image"].bytes_list.value
    if len(payload) != 1:
      raise ValueError(f"{self.where}: a record has no single image value.")
    label = int(feature["label"].int64_list.value[0])
    if self.raw:
      if len(payload[0]) != math.prod(self.shape):
        raise ValueError(f"{self.where}: a record does not hold a {self.shape} uint8 "
                         f"image.")
      return np.frombuffer(payload[0], np.uint8).reshape(self.shape), label
    return decode_bytes(payload[0], self.shape, self.resize, self.where), label

  def __repr__(self) -> str:
    return f"DecodeExample(shape={self.shape}, raw={self.raw}, resize={self.resize})"


class FileRecords:
  """Random access to ``(path, label)`` pairs of an image folder (picklable)."""

  def __init__(self, paths, labels, where: str):
    self.paths = list(paths)
    self.labels = np.asarray(labels, np.int64)
    self.where = where

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> tuple[str, int]:
    return self.paths[int(index)], int(self.labels[int(index)])

  def __repr__(self) -> str:
    return f"FileRecords({self.where!r}, n={len(self.paths)})"


class DecodeFile:
  """``(path, label)`` → ``(image uint8 [H, W, C], label)`` (:func:`decode_image`)."""

  def __init__(self, shape: tuple[int, int, int], *, resize: bool):
    self.shape = tuple(int(d) for d in shape)
    self.resize = bool(resize)

  def __call__(self, record: tuple[str, int]) -> tuple[np.ndarray, int]:
    path, label = record
    return decode_image(path, self.shape, self.resize), int(label)

  def __repr__(self) -> str:
    return f"DecodeFile(shape={self.shape}, resize={self.resize})"


def decode_bytes(data: bytes, shape: tuple[int, int, int], resize: bool,
                 where: str = "") -> np.ndarray:
  """Decode an encoded image (JPEG, PNG) to ``shape`` (grey or RGB by ``shape[-1]``)."""
  import io
  return _decode(io.BytesIO(data), shape, resize, where, "an image record",
                 "the data set is corrupt.")


# ----------------------------------------------------------------------------
# A synthetic ImageNet-like JPEG set (offline, from Fashion-MNIST)
# ----------------------------------------------------------------------------

JPEG_SET_NAME = "sslit_jpeg_set"


def synthetic_jpeg(image: np.ndarray, *, seed: int, size: tuple[int, int] | None = None,
                   quality: int = 90, noise: float = 30.0) -> bytes:
  """One ImageNet-like JPEG from a small grey image.

  The image is upsampled (bicubic) to ``size`` (``(width, height)``; default a
  random one in 360-440 x 310-390, ImageNet's typical ~400 x 350), coloured (a
  random foreground colour over a background textured by two random plane waves),
  given Gaussian pixel noise of standard deviation ``noise`` (uint8 units, which
  is what makes the file as large as a photograph's: ~100 KB at quality 90) and
  JPEG-encoded. A pure function of ``(image, seed, size, quality, noise)``.

  Args:
    image: uint8 ``[h, w]`` or ``[h, w, 1]``.
    seed: the random seed (colours, texture, noise, size).
    size: ``(width, height)`` of the output, or None for a random ImageNet-like one.
    quality: the JPEG quality (1-95).
    noise: standard deviation of the pixel noise.

  Returns:
    The JPEG file's bytes.
  """
  import io

  from PIL import Image
  rng = np.random.default_rng(seed)
  if size is None:
    size = (int(rng.integers(360, 441)), int(rng.integers(310, 391)))
  w, h = size
  grey = np.asarray(image, np.uint8).reshape(image.shape[0], image.shape[1])
  g = np.asarray(Image.fromarray(grey).resize((w, h), Image.BICUBIC),
                 np.float32)[..., None] / 255.0
  fg = rng.uniform(0.35, 1.0, 3).astype(np.float32)
  bg = rng.uniform(0.1, 0.7, 3).astype(np.float32)
  y = np.arange(h, dtype=np.float32)[:, None]
  x = np.arange(w, dtype=np.float32)[None, :]
  texture = np.zeros((h, w), np.float32)
  for _ in range(2):
    fx, fy = rng.uniform(-0.15, 0.15, 2)
    texture += np.sin(fx * x + fy * y + rng.uniform(0, 2 * np.pi)).astype(np.float32)
  texture = 0.75 + 0.125 * texture[..., None]
  pixels = 255.0 * (g * fg + (1.0 - g) * bg * texture)
  # Noise from a fixed bank at a random offset: drawing 400k normals per image
  # would cost more than the rest together.
  bank = _noise_bank()
  start = int(rng.integers(0, len(bank) - h * w * 3))
  pixels += float(noise) * bank[start:start + h * w * 3].reshape(h, w, 3)
  out = io.BytesIO()
  Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
      out, "JPEG", quality=int(quality))
  return out.getvalue()


_NOISE_BANK: list[np.ndarray] = []


def _noise_bank() -> np.ndarray:
  """2**21 standard normal float32 values, the same in every process."""
  if not _NOISE_BANK:
    _NOISE_BANK.append(np.random.default_rng(12345).standard_normal(1 << 21, np.float32))
  return _NOISE_BANK[0]


def jpeg_set_builder_class():
  """The tfds builder class of the synthetic JPEG set (defined on first use)."""
  if "jpeg_set" in _BUILDER_CLASSES:
    return _BUILDER_CLASSES["jpeg_set"]
  import io

  import tensorflow_datasets as tfds

  class SslitJpegSet(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """JPEG-encoded images (tfds Image feature, as imagenet2012 stores them)."""

    name = JPEG_SET_NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Fashion-MNIST upsampled to ~400x350 colour JPEGs."}

    def __init__(self, *, splits_fn, **kwargs):
      self._splits_fn = splits_fn
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description=("A synthetic ImageNet-like JPEG set made offline by "
                       "sslit.sources.build_jpeg_set: Fashion-MNIST images upsampled "
                       "to ~400x350, coloured, textured and noised, ~100 KB each."),
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(None, None, 3),
                                           encoding_format="jpeg"),
              "label": tfds.features.ClassLabel(names=list(FASHION_MNIST_CLASSES)),
          }),
          supervised_keys=("image", "label"), disable_shuffling=True)

    def _split_generators(self, dl_manager):
      del dl_manager  # never used: nothing is downloaded
      return {s: self._generate_examples(items) for s, items in self._splits_fn().items()}

    def _generate_examples(self, items):
      for i, (jpeg, label) in enumerate(items):
        yield i, {"image": io.BytesIO(jpeg), "label": int(label)}

  _BUILDER_CLASSES["jpeg_set"] = SslitJpegSet
  return SslitJpegSet


def build_jpeg_set(data_dir: str | os.PathLike | None = None, *, num_train: int = 10_000,
                   num_test: int = 1_000, folder: str | os.PathLike | None = None,
                   source_dir: str | os.PathLike = FASHION_MNIST_DIR, seed: int = 0,
                   size: tuple[int, int] | None = None, quality: int = 90):
  """Build (once) a synthetic ImageNet-like JPEG set, offline.

  The first ``num_train`` / ``num_test`` Fashion-MNIST images of each split become
  :func:`synthetic_jpeg` files (seed ``seed * 10**7 + split offset + index``),
  written as the tfds ``array_record`` data set ``sslit_jpeg_set`` in ``data_dir``
  (read with ``sslit.data.load("jpeg_set", split, data_dir=...)``) and, if
  ``folder`` is given, as the same JPEG files in ``<folder>/<split>/<class>/
  <index>.jpg`` (``load("folder:<folder>", ...)``). A data dir that already holds
  the set with the same counts is reused.

  Args:
    data_dir: the tfds data dir (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
    num_train: train images (at most 60,000).
    num_test: test images (at most 10,000).
    folder: also write the image folder here.
    source_dir: the Fashion-MNIST IDX files.
    seed: the generation seed.
    size: a fixed ``(width, height)`` for every image (default: random ImageNet-like).
    quality: the JPEG quality.

  Returns:
    The prepared tfds builder.
  """
  for field, n, most in (("num_train", num_train, 60_000), ("num_test", num_test, 10_000)):
    if not isinstance(n, (int, np.integer)) or not 1 <= n <= most:
      raise ValueError(f"{field} must be an int in [1, {most}] (Fashion-MNIST's split "
                       f"size), got {n!r}.")
  cls = jpeg_set_builder_class()
  root = default_data_dir(data_dir)
  counts = {"train": int(num_train), "test": int(num_test)}

  def generate(split: str, offset: int):
    images, labels = read_fashion_mnist(source_dir, split)
    base = int(seed) * 10**7 + offset * 10**6
    for i in range(counts[split]):  # one image at a time: nothing held in memory
      yield synthetic_jpeg(images[i], seed=base + i, size=size, quality=quality), int(
          labels[i])

  def splits():
    return {split: generate(split, offset) for offset, split in enumerate(counts)}

  builder = cls(splits_fn=splits, data_dir=os.fspath(root), file_format="array_record")
  if not builder.is_prepared():
    import tensorflow_datasets as tfds
    with _file_lock(root / f".{cls.name}.lock"):
      builder = cls(splits_fn=splits, data_dir=os.fspath(root), file_format="array_record")
      if not builder.is_prepared():
        print(f"sslit.data: generating {JPEG_SET_NAME} ({num_train} + {num_test} JPEGs) "
              f"into {root}", file=sys.stderr)
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  have = {s: builder.info.splits[s].num_examples for s in counts}
  if have != counts:
    raise ValueError(f"{builder.data_dir} holds a JPEG set of {have} images, not "
                     f"{counts}: delete {root / JPEG_SET_NAME} or use another data_dir.")
  if folder is not None:
    _write_folder(pathlib.Path(folder), builder, counts)
  return builder


def _write_folder(folder: pathlib.Path, builder, counts: dict[str, int]) -> None:
  """The tfds set's JPEG bytes as ``<folder>/<split>/<class>/<index>.jpg`` files."""
  from tensorflow_datasets.proto import tf_example_pb2
  records = {s: ExampleRecords(builder.data_dir, s) for s in counts}
  for split, n in counts.items():
    for c in range(len(FASHION_MNIST_CLASSES)):
      (folder / split / f"{c:02d}").mkdir(parents=True, exist_ok=True)
    for lo in range(0, n, 1024):
      for i, r in zip(range(lo, min(n, lo + 1024)),
                      records[split].__getitems__(range(lo, min(n, lo + 1024)))):
        feature = tf_example_pb2.Example.FromString(r).features.feature
        label = int(feature["label"].int64_list.value[0])
        path = folder / split / f"{label:02d}" / f"{i:06d}.jpg"
        if not path.exists():
          path.write_bytes(feature["image"].bytes_list.value[0])
