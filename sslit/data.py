"""Image datasets as NumPy batches, read through tensorflow-datasets without TensorFlow.

Every data set is a :class:`Dataset`: a random-access collection of
``(image uint8 [H, W, C], label int32)`` pairs with ``get(indices)`` returning a
whole batch at once. :func:`load` builds one by name; :func:`batch_iterator` turns
it into a deterministic, resumable, per-host-sharded stream of batches.

Sources:

* ``"fashion_mnist"`` (the default data set): built offline, once, into a tfds
  ``array_record`` data set named ``sslit_fashion_mnist`` in the tfds data dir from
  the IDX files that Debian's package ``dataset-fashion-mnist`` installs under
  ``/usr/share/datasets/fashion-mnist/``; then read through tfds's random-access
  ``data_source``.
* ``"digits"``: scikit-learn's bundled 8x8 digits (values 0..16 scaled to uint8
  0..255), split deterministically 1497 train / 300 test, built the same way into
  ``sslit_digits``.
* ``"cifar10"``, ``"cifar100"``, ``"imagenet2012"``: tfds data sets already
  prepared in ``array_record`` format in the tfds data dir (``tfds build <name>
  --file_format=array_record`` on a machine with network, then copy the directory).
* ``"tiny_imagenet"`` and ``"folder:<path>"``: local image folders decoded with PIL
  to a fixed image size.

Nothing here ever downloads: a data set that is not present raises
:class:`DatasetNotFoundError` naming the package or command that provides it.
Small splits (at most ``MEMORY_LIMIT_BYTES`` of pixels; Fashion-MNIST's 47 MB,
CIFAR's 150 MB) are read once into an in-memory NumPy array on first use, so a
batch is one NumPy gather; larger ones are read with one ``data_source`` call per
batch.
"""

from __future__ import annotations

import math
import os
import pathlib
import threading
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sslit import _validate as v
from sslit import sources
from sslit.sources import (DatasetNotFoundError, FASHION_MNIST_CLASSES,
                           FASHION_MNIST_DIR, build_digits, build_fashion_mnist,
                           default_data_dir, read_fashion_mnist, read_idx)

Array = Any

__all__ = [
    "Dataset", "DatasetNotFoundError", "load", "preprocess", "channel_stats", "from_arrays", "batch_iterator",
    "steps_per_epoch", "epoch_permutation", "read_idx", "build_fashion_mnist",
    "build_digits", "read_fashion_mnist", "default_data_dir", "FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES",
    "NAMES",
]

NAMES = ("fashion_mnist", "digits", "cifar10", "cifar100", "imagenet2012",
         "jpeg_set", "tiny_imagenet", "folder:<path>")
# Splits whose pixels fit in this many bytes are cached in memory on first use.
MEMORY_LIMIT_BYTES = 1 << 30
# Mean/std of data sets that are not cached in memory use this many train images.
STATS_MAX_EXAMPLES = 10_000
# The conventional ImageNet statistics (torchvision), in [0, 1] units.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------


class Dataset:
  """A random-access split of an image classification data set.

  Attributes:
    name: the name given to :func:`load` (``"fashion_mnist"``, ``"folder:/x"``...).
    split: the split name (tfds slicing such as ``"train[:90%]"`` allowed for tfds
      sources).
    num_classes: number of classes; labels are in ``[0, num_classes)``.
    image_shape: ``(H, W, C)`` of every image.
    class_names: the class names, index = label.
    files: the files the split is read from (named in error messages).
    records: None or picklable ``(source, decode)``: ``source[i]`` a raw record,
      ``decode(record) -> (image, label)`` as ``get``, for worker processes.
  """

  def __init__(self, *, name: str, split: str, num_classes: int,
               image_shape: tuple[int, int, int], size: int,
               read: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
               files: Sequence[str], class_names: Sequence[str] | None = None,
               in_memory: bool | None = None,
               stats: Callable[[Dataset], tuple[np.ndarray, np.ndarray]] | None = None,
               records: tuple[Any, Callable] | None = None):
    self.name = name
    self.records = records
    self.split = split
    self.num_classes = int(num_classes)
    self.image_shape = tuple(int(d) for d in image_shape)
    self.class_names = tuple(class_names) if class_names is not None else tuple(
        str(i) for i in range(self.num_classes))
    self.files = tuple(str(f) for f in files)
    self._size = int(size)
    self._read = read
    self._stats = stats
    self._mean_std: tuple[np.ndarray, np.ndarray] | None = None
    self._images: np.ndarray | None = None
    self._labels: np.ndarray | None = None
    self._lock = threading.Lock()  # a prefetch thread may fill the cache
    if self._size == 0:
      raise ValueError(f"{name!r} split {split!r} is empty (0 examples) in "
                       f"{self._where()}.")
    nbytes = self._size * math.prod(self.image_shape)
    self.in_memory = (nbytes <= MEMORY_LIMIT_BYTES if in_memory is None
                      else bool(in_memory))

  def __len__(self) -> int:
    return self._size

  def __repr__(self) -> str:
    return (f"Dataset(name={self.name!r}, split={self.split!r}, n={self._size}, "
            f"image_shape={self.image_shape}, num_classes={self.num_classes}, "
            f"in_memory={self.in_memory})")

  def _where(self) -> str:
    if not self.files:
      return "memory"
    if len(self.files) <= 3:
      return ", ".join(self.files)
    return f"{self.files[0]} ... ({len(self.files)} files)"

  def get(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gather a batch of examples.

    Args:
      indices: integer indices ``[b]`` in ``[0, len(self))``; any order, repeats
        allowed.

    Returns:
      ``(images uint8 [b, H, W, C], labels int32 [b])`` in the order of
      ``indices``.
    """
    idx = np.asarray(indices)
    if idx.ndim != 1:
      raise ValueError(f"indices must be rank 1 [b], got shape {idx.shape}.")
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
      raise TypeError(f"indices must be integers, got dtype {idx.dtype}.")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= self._size):
      bad = idx[(idx < 0) | (idx >= self._size)][0]
      raise IndexError(f"index {bad} is out of range for {self.name!r} split "
                       f"{self.split!r} of {self._size} examples.")
    if idx.size == 0:
      return (np.zeros((0, *self.image_shape), np.uint8), np.zeros((0,), np.int32))
    if self.in_memory:
      if self._images is None:
        self.cache()
      return self._images[idx], self._labels[idx]
    return self._read_checked(idx)

  def _read_checked(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images, labels = self._read(idx)
    if images.shape != (len(idx), *self.image_shape) or images.dtype != np.uint8:
      raise ValueError(
          f"{self._where()}: expected uint8 images of shape {self.image_shape}, "
          f"got {images.dtype} {images.shape[1:]}.")
    labels = np.asarray(labels)
    bad = (labels < 0) | (labels >= self.num_classes)
    if bad.any():
      i = int(np.argmax(bad))
      raise ValueError(
          f"{self._where()}: label {int(labels[i])} of example {int(idx[i])} is "
          f"out of range [0, {self.num_classes}).")
    return images, labels.astype(np.int32)

  def cache(self) -> Dataset:
    """Read the whole split into memory (once); later ``get`` calls are gathers."""
    with self._lock:
      if self._images is None:
        self._fill()
    return self

  def _fill(self) -> None:
    images = np.empty((self._size, *self.image_shape), np.uint8)
    labels = np.empty((self._size,), np.int32)
    chunk = 4096
    for lo in range(0, self._size, chunk):
      idx = np.arange(lo, min(lo + chunk, self._size))
      images[lo:lo + len(idx)], labels[lo:lo + len(idx)] = self._read_checked(idx)
    self._images, self._labels = images, labels
    self.in_memory = True

  def _channel_stats(self, max_examples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean/std (ddof 0, [0, 1] units) over the split or a sample."""
    n = self._size
    if self.in_memory or max_examples is None or n <= max_examples:
      idx = np.arange(n)
    else:
      idx = np.sort(np.random.default_rng(0).choice(n, max_examples, replace=False))
    c = self.image_shape[-1]
    s1 = np.zeros(c, np.float64)
    s2 = np.zeros(c, np.float64)
    for lo in range(0, len(idx), 4096):
      x = self.get(idx[lo:lo + 4096])[0].reshape(-1, c).astype(np.float64)
      s1 += x.sum(0)
      s2 += (x * x).sum(0)
    count = len(idx) * math.prod(self.image_shape[:2])
    mean = s1 / count
    var = np.maximum(s2 / count - mean * mean, 0.0)
    return (mean / 255.0).astype(np.float32), (np.sqrt(var) / 255.0).astype(np.float32)

  def _ensure_stats(self) -> tuple[np.ndarray, np.ndarray]:
    if self._mean_std is None:
      if self._stats is not None:
        self._mean_std = self._stats(self)
      else:
        self._mean_std = self._channel_stats(STATS_MAX_EXAMPLES)
    return self._mean_std

  @property
  def mean(self) -> np.ndarray:
    """Per-channel pixel mean ``[C]`` of the train split, in [0, 1] units."""
    return self._ensure_stats()[0]

  @property
  def std(self) -> np.ndarray:
    """Per-channel pixel standard deviation ``[C]`` (ddof 0) of the train split."""
    return self._ensure_stats()[1]


def preprocess(images: Array, mean: Array, std: Array) -> jax.Array:
  """Network input from images: scale to [0, 1], standardise per channel.

  ``x = (images / 255 − mean) / std`` for integer images (uint8 in [0, 255]) and
  ``x = (images − mean) / std`` for floating images, which are taken to be in
  [0, 1] already (the output of ``sslit.augment``). Training applies this to the
  augmented views and evaluation to the clean images, with the *training set's*
  per-channel statistics in both cases.

  Args:
    images: ``[..., H, W, C]`` uint8 (or any integer dtype) or float in [0, 1].
    mean: per-channel mean in [0, 1] units, scalar or ``[C]``.
    std: per-channel standard deviation in [0, 1] units, scalar or ``[C]``, > 0.

  Returns:
    float32 array of the shape of ``images`` (float64 if ``images`` is float64).
  """
  images = jnp.asarray(images)
  if jnp.issubdtype(images.dtype, jnp.integer):
    x = images.astype(jnp.float32) / 255.0
  elif jnp.issubdtype(images.dtype, jnp.floating):
    x = images if images.dtype == jnp.float64 else images.astype(jnp.float32)
  else:
    raise TypeError(f"images must be uint8 or float in [0, 1], got {images.dtype}.")
  mean = jnp.asarray(mean, x.dtype)
  std = jnp.asarray(std, x.dtype)
  channels = images.shape[-1] if images.ndim else 1
  for name, s in (("mean", mean), ("std", std)):
    if s.ndim > 1 or (s.ndim == 1 and s.shape[0] not in (1, channels)):
      raise ValueError(
          f"{name} must be a scalar or [C] with C={channels} (the last axis of "
          f"images {tuple(images.shape)}), got shape {tuple(s.shape)}.")
  try:
    concrete_std = np.asarray(std)
  except Exception:  # pylint: disable=broad-except  (traced: checked by the caller)
    concrete_std = None
  if concrete_std is not None and np.any(concrete_std <= 0):
    raise ValueError(f"std must be > 0 everywhere, got {np.asarray(std)}.")
  return (x - mean) / std


def channel_stats(images: Array, *, chunk_size: int = 4096) -> tuple[np.ndarray,
                                                                     np.ndarray]:
  """Per-channel mean and standard deviation of images, in [0, 1] units.

  Integer images are divided by 255; float images are taken as they are. Accumulated
  in float64 on the host, ``chunk_size`` images at a time.

  Args:
    images: ``[n, H, W, C]`` uint8 or float in [0, 1].
    chunk_size: images per accumulation step.

  Returns:
    ``(mean [C], std [C])`` float32, std with ddof = 0.
  """
  v.check_rank(images, 4, "images", layout="[n, H, W, C]")
  images = np.asarray(images)
  scale = 255.0 if np.issubdtype(images.dtype, np.integer) else 1.0
  c = images.shape[-1]
  s1, s2, count = np.zeros(c), np.zeros(c), 0
  for i in range(0, images.shape[0], chunk_size):
    x = images[i:i + chunk_size].reshape(-1, c).astype(np.float64) / scale
    s1 += x.sum(0)
    s2 += (x * x).sum(0)
    count += x.shape[0]
  if count == 0:
    raise ValueError("images is empty: cannot compute channel statistics.")
  mean = s1 / count
  std = np.sqrt(np.maximum(s2 / count - mean * mean, 0.0))
  return mean.astype(np.float32), np.maximum(std, 1e-8).astype(np.float32)


def from_arrays(images: np.ndarray, labels: np.ndarray, *, num_classes: int,
                name: str = "arrays", split: str = "train",
                class_names: Sequence[str] | None = None) -> Dataset:
  """A :class:`Dataset` over in-memory arrays (checked once).

  Args:
    images: uint8 ``[N, H, W, C]``.
    labels: integer ``[N]`` in ``[0, num_classes)``.
    num_classes: the number of classes.
    name: the data set's name.
    split: the split's name.
    class_names: optional names, index = label.

  Returns:
    The in-memory :class:`Dataset`; ``mean``/``std`` are computed from these
    images.
  """
  images = np.asarray(images)
  labels = np.asarray(labels)
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} "
                     f"{images.shape}.")
  if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers of shape {images.shape[:1]}, got "
                     f"{labels.dtype} {labels.shape}.")
  files: Sequence[str] = ()
  ds = Dataset(name=name, split=split, num_classes=num_classes,
               image_shape=images.shape[1:], size=len(images),
               read=lambda idx: (images[idx], labels[idx]), files=files,
               class_names=class_names, in_memory=True)
  return ds.cache()


# ----------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------


def _check_batching(n: int, batch_size: int, drop_remainder: bool,
                    process_count: int) -> None:
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
  if not isinstance(process_count, (int, np.integer)) or process_count < 1:
    raise ValueError(f"process_count must be a positive integer, got {process_count!r}.")
  if batch_size % process_count:
    raise ValueError(
        f"batch_size={batch_size} (the global batch) must be divisible by "
        f"process_count={process_count}: each host reads batch_size // "
        f"process_count examples of every global batch.")
  if drop_remainder and n < batch_size:
    raise ValueError(
        f"batch_size={batch_size} is larger than the data set ({n} examples): with "
        f"drop_remainder=True an epoch has no batch; use a smaller batch_size or "
        f"drop_remainder=False.")


def steps_per_epoch(dataset: Dataset | int, batch_size: int, drop_remainder: bool = True,
                    process_count: int = 1) -> int:
  """Number of global batches in one epoch.

  ``N // batch_size`` with ``drop_remainder`` (the last partial batch is skipped),
  else ``ceil(N / batch_size)`` (the last batch is padded and masked).

  Args:
    dataset: a :class:`Dataset` or its length ``N``.
    batch_size: the global batch size (summed over hosts).
    drop_remainder: whether the last partial batch is dropped.
    process_count: number of hosts; only checked (``batch_size`` must divide).

  Returns:
    The number of steps per epoch, the same on every host.
  """
  n = dataset if isinstance(dataset, (int, np.integer)) else len(dataset)
  _check_batching(n, batch_size, drop_remainder, process_count)
  return n // batch_size if drop_remainder else -(-n // batch_size)


def epoch_permutation(n: int, *, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
  """The order in which epoch ``epoch`` visits the ``n`` examples.

  A pure function of ``(seed, epoch)``: ``np.random.default_rng([seed, epoch])``
  (PCG64 seeded by both numbers) permutes ``arange(n)``; without ``shuffle`` the
  order is ``arange(n)``. Every host computes the same order.
  """
  if not shuffle:
    return np.arange(n, dtype=np.int64)
  return np.random.default_rng([int(seed), int(epoch)]).permutation(n).astype(np.int64)


def batch_iterator(dataset: Dataset, batch_size: int, *, seed: int = 0,
                   shuffle: bool = True, drop_remainder: bool = True,
                   process_index: int = 0, process_count: int = 1,
                   start_step: int = 0,
                   num_epochs: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Deterministic, resumable, per-host batches of a :class:`Dataset`.

  Global step ``s`` is batch ``i = s % S`` of epoch ``e = s // S`` (``S`` =
  :func:`steps_per_epoch`): the examples ``perm_e[i*B:(i+1)*B]`` with ``perm_e =
  epoch_permutation(N, seed=seed, epoch=e)``. Host ``p`` of ``P`` receives rows
  ``[p*B/P, (p+1)*B/P)`` of that global batch, so hosts read disjoint slices that
  together are the global batch. Starting at ``start_step`` yields exactly what an
  uninterrupted iterator yields from that step on.

  With ``drop_remainder=False`` the last batch of an epoch is padded with zero
  images and label 0, and ``mask`` is False on the padding.

  Args:
    dataset: the data set.
    batch_size: the global batch size ``B`` (all hosts together).
    seed: the shuffling seed (non-negative int).
    shuffle: whether epochs are shuffled.
    drop_remainder: drop (True) or pad and mask (False) the last partial batch.
    process_index: this host's index ``p`` (``jax.process_index()``).
    process_count: number of hosts ``P`` (``jax.process_count()``).
    start_step: the global step to start from (resumption).
    num_epochs: stop after this many epochs (counted from step 0); ``None``
      iterates forever.

  Yields:
    ``{"image": uint8 [B/P, H, W, C], "label": int32 [B/P], "mask": bool [B/P]}``.
  """
  n = len(dataset)
  num_steps = steps_per_epoch(n, batch_size, drop_remainder, process_count)
  if not isinstance(process_index, (int, np.integer)) or not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, {process_count}), got "
                     f"{process_index!r}.")
  if not isinstance(start_step, (int, np.integer)) or start_step < 0:
    raise ValueError(f"start_step must be a non-negative integer, got {start_step!r}.")
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
  if num_epochs is not None and (not isinstance(num_epochs, (int, np.integer))
                                 or num_epochs < 0):
    raise ValueError(f"num_epochs must be None or a non-negative integer, got "
                     f"{num_epochs!r}.")
  local = batch_size // process_count
  lo, hi = process_index * local, (process_index + 1) * local
  end = None if num_epochs is None else num_epochs * num_steps

  def generate():
    step = int(start_step)
    cached_epoch, order = -1, None
    while end is None or step < end:
      epoch, i = divmod(step, num_steps)
      if epoch != cached_epoch:
        order, cached_epoch = epoch_permutation(n, seed=seed, epoch=epoch,
                                                shuffle=shuffle), epoch
      idx = order[i * batch_size:(i + 1) * batch_size][lo:hi]
      images, labels = dataset.get(idx)
      mask = np.zeros((local,), bool)
      mask[:len(idx)] = True
      if len(idx) < local:
        pad = local - len(idx)
        images = np.concatenate(
            [images, np.zeros((pad, *dataset.image_shape), np.uint8)])
        labels = np.concatenate([labels, np.zeros((pad,), np.int32)])
      yield {"image": images, "label": labels, "mask": mask}
      step += 1

  return generate()


def _tfds_dataset(name: str, builder, split: str, *, image_size: int | None,
                  in_memory: bool | None, stats=None,
                  raw_tensor: bool = False, encoded: bool = False) -> Dataset:
  """A :class:`Dataset` over a prepared tfds builder's array_record data source.

  ``raw_tensor``: sslit's own raw-pixel records; ``encoded``: records whose image is
  an encoded JPEG/PNG, read raw and decoded by ``sources.DecodeExample`` (PIL).
  Both can also be read by worker processes (``Dataset.records``).
  """
  info = builder.info
  available = sorted(info.splits.keys())
  if split.split("[")[0] not in available:
    raise ValueError(f"{name!r} has no split {split!r}; available: {available}.")
  files = sources.split_files(builder, split)
  file_format = str(getattr(info.file_format, "value", info.file_format))
  if info.file_format is not None and file_format != "array_record":
    raise DatasetNotFoundError(
        f"{name!r} in {builder.data_dir} is stored as {file_format}, which only "
        f"TensorFlow reads; sslit reads array_record: convert it with `tfds "
        f"convert_format --dataset_version_dir={builder.data_dir} "
        f"--out_file_format=array_record` (needs TensorFlow) or rebuild it on a "
        f"machine with network with `tfds build {name} --file_format=array_record` "
        f"and copy the directory.")
  try:
    if raw_tensor or encoded:
      from tensorflow_datasets.core import decode
      source = builder.as_data_source(
          split=split, deserialize_method=decode.DeserializeMethod.RAW_BYTES)
    else:
      source = builder.as_data_source(split=split)
    size = len(source)
  except Exception as e:  # array_record raises several types on broken files
    raise ValueError(f"{', '.join(files)}: cannot open the {split!r} split of {name!r} "
                     f"({type(e).__name__}: {e}); delete {builder.data_dir} and "
                     f"prepare it again.") from e
  features = info.features
  label_feature = features["label"]
  num_classes = label_feature.num_classes
  shape = tuple(features["image"].shape)
  if image_size is not None:
    shape = (image_size, image_size, shape[-1] or 3)
  if any(d is None for d in shape):
    raise ValueError(f"{name!r} images have no fixed size ({shape}); pass image_size=.")

  def decode_read(idx: np.ndarray):
    records = sources.get_records(
        source, idx, files, fix=f"delete {builder.data_dir} and prepare {name!r} again")
    images = []
    for j, r in zip(idx, records):
      image = np.asarray(r["image"])
      if image.ndim == 2:
        image = image[..., None]
      if image.shape != shape:
        if image_size is None:
          raise ValueError(f"{', '.join(files)}: example {int(j)} has image shape "
                           f"{image.shape}, expected {shape}.")
        image = sources.resize_center_crop(image, shape)
      images.append(image)
    labels = np.asarray([r["label"] for r in records], np.int64)
    return np.stack(images).astype(np.uint8, copy=False), labels

  records = None
  if raw_tensor or encoded:
    records = (sources.ExampleRecords(builder.data_dir, split),
               sources.DecodeExample(shape, raw=raw_tensor, resize=image_size is not None,
                                     where=", ".join(files)))
  if raw_tensor:
    read = sources.raw_tensor_reader(source, shape, files)
  elif encoded:
    read = _records_reader(source, records[1], files,
                           fix=f"delete {builder.data_dir} and prepare {name!r} again")
  else:
    read = decode_read
  return Dataset(name=name, split=split, num_classes=num_classes, image_shape=shape,
                 size=size, read=read, files=files, class_names=label_feature.names,
                 in_memory=in_memory, stats=stats, records=records)


def _records_reader(source, decode: Callable, files: list[str], *, fix: str):
  """Reads raw records with one ``data_source`` call and decodes them one by one."""
  def read(idx: np.ndarray):
    decoded = [decode(r) for r in sources.get_records(source, idx, files, fix=fix)]
    return (np.stack([im for im, _ in decoded]),
            np.asarray([label for _, label in decoded], np.int64))
  return read


def _prepared_builder(name: str, data_dir: str | os.PathLike | None, *,
                      fix: str | None = None):
  """The newest prepared version of tfds data set ``name`` (``fix``: what makes it)."""
  import tensorflow_datasets as tfds
  root = default_data_dir(data_dir)
  base = root / name
  versions = []
  if base.is_dir():
    for d in base.iterdir():
      parts = d.name.split(".")
      if (d / "dataset_info.json").is_file() and len(parts) == 3 and all(
          p.isdigit() for p in parts):
        versions.append((tuple(int(p) for p in parts), d))
  if not versions:
    extra = ""
    if name == "imagenet2012":
      extra = (" ImageNet needs the manual files ILSVRC2012_img_train.tar and "
               "ILSVRC2012_img_val.tar in the tfds manual dir "
               "(<data_dir>/downloads/manual) first.")
    if fix is not None:
      raise DatasetNotFoundError(f"data set {name!r} is not in {root}: make it with "
                                 f"`{fix}` and pass data_dir=<dir>.")
    raise DatasetNotFoundError(
        f"tfds data set {name!r} is not prepared in {root} (no {base}/<version>/"
        f"dataset_info.json). sslit never downloads: on a machine with network run "
        f"`tfds build {name} --file_format=array_record --data_dir=<dir>` (pip "
        f"install tensorflow-datasets), then copy <dir>/{name} to {base}, or pass "
        f"data_dir= (or set TFDS_DATA_DIR) where it is.{extra}")
  path = max(versions)[1]
  return tfds.builder_from_directory(os.fspath(path))


# ----------------------------------------------------------------------------
# Image folders (PIL)
# ----------------------------------------------------------------------------


def _files_dataset(name: str, split: str, paths: Sequence[str], labels: np.ndarray,
                   class_names: Sequence[str], *, image_size: int | None,
                   in_memory: bool | None, where: pathlib.Path,
                   stats=None, channels: int | None = None) -> Dataset:
  if not paths:
    raise ValueError(f"{where}: the {split!r} split of {name!r} has no images "
                     f"({', '.join(sources.IMAGE_EXTENSIONS)}).")
  from PIL import Image
  first = paths[0]
  if image_size is None:
    try:
      with Image.open(first) as pil:
        w, h, mode = pil.width, pil.height, pil.mode
    except Exception as e:
      raise ValueError(f"{first}: cannot decode image ({e}).") from e
  else:
    with Image.open(first) as pil:
      mode = pil.mode
    h = w = int(image_size)
  if channels is None:
    channels = 1 if mode in ("1", "L", "LA", "I", "I;16", "F") else 3
  shape = (h, w, channels)
  resize = image_size is not None
  paths = list(paths)

  decode = sources.DecodeFile(shape, resize=resize)

  def read(idx: np.ndarray):
    images = np.stack([decode((paths[i], 0))[0] for i in idx])
    return images, labels[idx]

  return Dataset(name=name, split=split, num_classes=len(class_names),
                 image_shape=shape, size=len(paths), read=read,
                 files=[os.fspath(where)], class_names=class_names,
                 in_memory=in_memory, stats=stats,
                 records=(sources.FileRecords(paths, labels, os.fspath(where)), decode))


def _folder_split(root: pathlib.Path, split: str):
  """``root/<split>/<class>/*.png|jpg`` → (paths, labels, class names)."""
  if not root.is_dir():
    raise DatasetNotFoundError(f"image folder {root} does not exist.")
  split_dir = root / split
  if not split_dir.is_dir():
    have = sorted(d.name for d in root.iterdir() if d.is_dir())
    raise DatasetNotFoundError(f"image folder {root} has no split directory "
                               f"{split_dir} (found: {have}).")
  ref = root / "train" if (root / "train").is_dir() else split_dir
  classes = sorted(d.name for d in ref.iterdir() if d.is_dir())
  if not classes:
    raise ValueError(f"{ref}: no class subdirectories (expected {ref}/<class>/*.png).")
  index = {c: i for i, c in enumerate(classes)}
  paths, labels = [], []
  for d in sorted(x for x in split_dir.iterdir() if x.is_dir()):
    if d.name not in index:
      raise ValueError(f"{d}: class {d.name!r} is not one of the {len(classes)} "
                       f"classes of {ref}.")
    files = sources.list_images(d)
    paths += [os.fspath(p) for p in files]
    labels += [index[d.name]] * len(files)
  return paths, np.asarray(labels, np.int64), classes


def _tiny_imagenet_split(root: pathlib.Path, split: str):
  """Tiny-ImageNet's own layout: wnids.txt, train/<wnid>/images, val annotations."""
  wnids_file = root / "wnids.txt"
  if not wnids_file.is_file():
    raise DatasetNotFoundError(
        f"Tiny-ImageNet not found at {root} (no {wnids_file}). sslit never downloads: "
        f"fetch http://cs231n.stanford.edu/tiny-imagenet-200.zip on a machine with "
        f"network and unzip it into the tfds data dir (giving <data_dir>/"
        f"tiny-imagenet-200), or pass source_dir=.")
  classes = sorted(w.strip() for w in wnids_file.read_text().split() if w.strip())
  index = {c: i for i, c in enumerate(classes)}
  paths, labels = [], []
  if split == "train":
    for wnid in classes:
      d = root / "train" / wnid / "images"
      if not d.is_dir():
        raise ValueError(f"{d}: missing Tiny-ImageNet train directory of {wnid}.")
      files = sources.list_images(d)
      paths += [os.fspath(p) for p in files]
      labels += [index[wnid]] * len(files)
  elif split in ("val", "validation"):
    ann = root / "val" / "val_annotations.txt"
    if not ann.is_file():
      raise ValueError(f"{ann}: missing Tiny-ImageNet validation annotations.")
    for lineno, line in enumerate(ann.read_text().splitlines(), 1):
      if not line.strip():
        continue
      fields = line.split("\t")
      if len(fields) < 2 or fields[1] not in index:
        raise ValueError(f"{ann}:{lineno}: bad annotation line {line!r} (unknown "
                         f"class or missing field).")
      paths.append(os.fspath(root / "val" / "images" / fields[0]))
      labels.append(index[fields[1]])
  else:
    raise ValueError(f"Tiny-ImageNet split must be 'train' or 'val' (its test split "
                     f"has no labels), got {split!r}.")
  return paths, np.asarray(labels, np.int64), classes


# ----------------------------------------------------------------------------
# load
# ----------------------------------------------------------------------------

_STATS_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _train_stats(key: tuple, make_train: Callable[[], Dataset]):
  """Per-channel mean/std of the train split, computed once per process."""
  def stats(ds: Dataset):
    if key not in _STATS_CACHE:
      train = ds if ds.split == "train" else make_train()
      _STATS_CACHE[key] = train._channel_stats(STATS_MAX_EXAMPLES)
    return _STATS_CACHE[key]
  return stats


def load(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
         source_dir: str | os.PathLike | None = None, image_size: int | None = None,
         in_memory: bool | None = None) -> Dataset:
  """Load a split of a data set as a :class:`Dataset` (never downloads).

  Args:
    name: ``"fashion_mnist"``, ``"digits"``, ``"cifar10"``, ``"cifar100"``,
      ``"imagenet2012"``, ``"jpeg_set"`` (made by ``bench/make_jpeg_set.py``; ImageNet's
      mean/std), ``"tiny_imagenet"`` or ``"folder:<path>"`` (``<path>/
      <split>/<class>/*.png|jpg``; classes are the sorted subdirectories of
      ``<path>/train``).
    split: ``"train"``, ``"test"`` (``"validation"`` for imagenet2012,
      ``"val"`` for tiny_imagenet, any directory name for folders); tfds
      sources accept tfds slicing such as ``"train[:90%]"``.
    data_dir: the tfds data dir (default ``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``): where fashion_mnist/digits are built and the
      tfds data sets are prepared; tiny_imagenet is looked up as
      ``<data_dir>/tiny-imagenet-200``.
    source_dir: fashion_mnist: the directory of the IDX files (default
      ``/usr/share/datasets/fashion-mnist``); tiny_imagenet: its root.
    image_size: resize (shorter side, bilinear) and centre-crop every image to
      ``image_size x image_size``; default: native size (224 for imagenet2012,
      whose images vary in size; for folders, the first image's size, and another
      size is an error).
    in_memory: cache the whole split in memory on first use; default: if its
      pixels take at most ``MEMORY_LIMIT_BYTES`` (1 GiB).

  Returns:
    The :class:`Dataset`. ``mean``/``std`` are per-channel statistics of the
    *train* split in [0, 1] units (exact over the split, or over 10,000 train
    images when the split is not cached; imagenet2012: the conventional
    (0.485, 0.456, 0.406)/(0.229, 0.224, 0.225)).

  Raises:
    DatasetNotFoundError: the data set is not present; the message names the
      package or the command that provides it.
    ValueError: unknown name or split, or bad data (the message names the file).
  """
  if not isinstance(name, str) or not isinstance(split, str):
    raise TypeError(f"name and split must be strings, got {name!r}, {split!r}.")
  if image_size is not None and (not isinstance(image_size, (int, np.integer))
                                 or image_size < 1):
    raise ValueError(f"image_size must be None or a positive int, got {image_size!r}.")
  root = default_data_dir(data_dir)
  again = lambda s: load(name, s, data_dir=data_dir, source_dir=source_dir,  # noqa: E731
                         image_size=image_size, in_memory=in_memory)
  key = (name, os.fspath(root), os.fspath(source_dir or ""), image_size)

  if name in ("fashion_mnist", "digits"):
    if name == "fashion_mnist":
      builder = build_fashion_mnist(root, source_dir=source_dir or FASHION_MNIST_DIR)
    else:
      builder = build_digits(root)
    return _tfds_dataset(name, builder, split, image_size=image_size,
                         in_memory=in_memory, raw_tensor=image_size is None,
                         stats=_train_stats(key, lambda: again("train")))
  if name in ("cifar10", "cifar100", "imagenet2012"):
    builder = _prepared_builder(name, root)
    stats = None
    if name == "imagenet2012":
      image_size = image_size or 224
      mean_std = (np.asarray(_IMAGENET_MEAN, np.float32),
                  np.asarray(_IMAGENET_STD, np.float32))
      stats = lambda ds: mean_std  # noqa: E731
    else:
      stats = _train_stats(key, lambda: again("train"))
    return _tfds_dataset(name, builder, split, image_size=image_size,
                         in_memory=in_memory, stats=stats)
  if name == "jpeg_set":
    builder = _prepared_builder(sources.JPEG_SET_NAME, root,
                                fix="python bench/make_jpeg_set.py --data-dir <dir>")
    mean_std = (np.asarray(_IMAGENET_MEAN, np.float32), np.asarray(_IMAGENET_STD, np.float32))
    return _tfds_dataset(name, builder, split, image_size=image_size or 224,
                         in_memory=in_memory, encoded=True,
                         stats=lambda ds: mean_std)
  if name == "tiny_imagenet":
    base = pathlib.Path(source_dir) if source_dir else root / "tiny-imagenet-200"
    paths, labels, classes = _tiny_imagenet_split(base, split)
    # A few Tiny-ImageNet JPEGs are grey-scale: always decode to RGB.
    return _files_dataset(name, split, paths, labels, classes, image_size=image_size,
                          in_memory=in_memory, where=base, channels=3,
                          stats=_train_stats(key, lambda: again("train")))
  if name.startswith("folder:"):
    base = pathlib.Path(name[len("folder:"):]).expanduser()
    paths, labels, classes = _folder_split(base, split)
    stats = None
    if (base / "train").is_dir():
      stats = _train_stats(key, lambda: again("train"))
    return _files_dataset(name, split, paths, labels, classes, image_size=image_size,
                          in_memory=in_memory, where=base / split, stats=stats)
  raise ValueError(f"unknown data set {name!r}; one of {', '.join(NAMES)}.")
