"""Representations out of a network: features of a data set, raw pixels, baselines.

* :func:`extract_features` embeds a data set (an ``sslit.data.Dataset`` or an
  ``(images, labels)`` pair) with a frozen network in eval mode, batched, at most
  two batches in flight, optionally sharded over a mesh;
* :func:`raw_pixel_features`: the preprocessed pixels, flattened (a baseline);
* :func:`random_init_variables`: a random network whose BatchNorm running
  statistics are first calibrated on training batches (:func:`calibrate_batch_stats`;
  without it eval-mode BatchNorm is the identity and the baseline unfairly weak);
* :func:`subset_indices`: the seeded subsets the evaluators and the monitor use.

Images become network inputs through ``sslit.data.preprocess`` with the training
set's per-channel statistics, exactly as in training.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from sslit import _validate as v
from sslit import models
from sslit import data as data_lib
from sslit.data import channel_stats

Array = Any
Variables = Any
ApplyFn = Callable[[Variables, Array], Any]

__all__ = ["extract_features", "raw_pixel_features", "calibrate_batch_stats",
           "calibration_batches", "calibrated_variables", "random_init_variables",
           "subset_indices",
           "as_source", "source_stats", "batched_apply", "subset",
           "infer_num_classes", "ArraySource"]


class ArraySource:
  """A ``(images, labels)`` pair exposed with the ``sslit.data.Dataset`` methods."""

  def __init__(self, images: Array, labels: Array, mean=None, std=None):
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim < 2:
      raise ValueError(f"images must be [n, ...] with n examples, got shape "
                       f"{images.shape}.")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f"labels must be a 1-D integer array [n], got shape "
                       f"{labels.shape} and dtype {labels.dtype}.")
    if images.shape[0] != labels.shape[0]:
      raise ValueError(f"images and labels must have the same length, got images "
                       f"{images.shape} and labels {labels.shape}.")
    self.images, self.labels = images, labels
    self._mean, self._std = mean, std

  def __len__(self) -> int:
    return self.images.shape[0]

  def get(self, indices):
    return self.images[indices], self.labels[indices]

  @property
  def mean(self):
    if self._mean is None:
      if self.images.ndim != 4:
        self._mean, self._std = np.float32(0.0), np.float32(1.0)
      else:
        self._mean, self._std = channel_stats(self.images)
    return self._mean

  @property
  def std(self):
    self.mean  # pylint: disable=pointless-statement
    return self._std


def as_source(dataset: Any):
  """A data set or an ``(images, labels)`` pair as something with ``get``/``len``."""
  if hasattr(dataset, "get") and hasattr(dataset, "__len__") and not isinstance(
      dataset, (tuple, list, dict)):
    return dataset
  if isinstance(dataset, (tuple, list)) and len(dataset) == 2:
    return ArraySource(*dataset)
  raise TypeError(
      "dataset must be an sslit.data.Dataset (with get(indices) and len) or an "
      f"(images, labels) pair of arrays, got {type(dataset).__name__}.")


def source_stats(src, mean, std):
  """Per-channel statistics: explicit ones first, then the data set's own."""
  if mean is None:
    mean = getattr(src, "mean", None)
  if std is None:
    std = getattr(src, "std", None)
  if mean is None or std is None:
    raise ValueError("no per-channel statistics: pass mean= and std= (the training "
                     "set's, in [0, 1] units) or preprocess=.")
  return np.asarray(mean, np.float32), np.asarray(std, np.float32)


@dataclasses.dataclass(frozen=True)
class _UserPreprocess:
  """Adapts a one-argument preprocessing function to ``(images, mean, std)``.

  Frozen (hashable by the wrapped function) so jitted callers cache across calls.
  """
  fn: Callable[[Array], Array]

  def __call__(self, images, mean, std):
    del mean, std
    return self.fn(images)


def _pick_output(out: Any, output: str | None) -> jax.Array:
  if isinstance(out, Mapping):
    if output is None or output not in out:
      raise ValueError(f"apply_fn returned a dict with keys {sorted(out)}; choose "
                       f"one with output=, got {output!r}.")
    out = out[output]
  out = jnp.asarray(out)
  return out.reshape(out.shape[0], -1)


@functools.partial(jax.jit, static_argnames=("apply_fn", "prep_fn", "output"))
def _embed_batch(variables, images, mean, std, *, apply_fn, prep_fn, output):
  out = apply_fn(variables, prep_fn(images, mean, std))
  if isinstance(output, tuple):
    return {k: _pick_output(out, k) for k in output}
  if isinstance(out, Mapping) and output is None:
    return {k: jnp.asarray(o).reshape(o.shape[0], -1) for k, o in out.items()}
  return _pick_output(out, output)


def batched_apply(batch_fn: Callable, source, n: int, batch_size: int, *,
                  sharding=None, progress: str | None = None) -> tuple[Any, np.ndarray]:
  """Applies ``batch_fn(images)`` to the first ``n`` examples, fixed batch shape.

  The last batch is padded with zeros to ``batch_size`` and the padding rows are
  dropped from the result. At most two batches are in flight, so the host reads the
  next batch while the device computes without queueing the whole data set.
  ``progress``: a progress-bar label (None: no bar).
  """
  bs = min(batch_size, n)
  if sharding is not None:
    devices = len(sharding.device_set)
    if bs % devices:
      raise ValueError(f"batch_size {bs} must be divisible by the {devices} devices "
                       "of the sharding.")
  outs, labels, pending = [], [], collections.deque()

  def drain(limit):
    while len(pending) > limit:
      out, m = pending.popleft()
      outs.append(jax.tree.map(lambda a: np.asarray(a)[:m], out))

  starts = range(0, n, bs)
  if progress is not None:
    starts = tqdm(starts, desc=progress, unit="batch", dynamic_ncols=True)
  for start in starts:
    idx = np.arange(start, min(start + bs, n))
    images, labs = source.get(idx)
    images = np.asarray(images)
    m = len(idx)
    if m < bs:
      pad = np.zeros((bs - m,) + images.shape[1:], images.dtype)
      images = np.concatenate([images, pad])
    if sharding is not None:
      images = jax.device_put(images, sharding)
    pending.append((batch_fn(images), m))
    labels.append(np.asarray(labs))
    drain(2)
  drain(0)
  feats = jax.tree.map(lambda *xs: np.concatenate(xs), *outs)
  return feats, np.concatenate(labels)


def extract_features(apply_fn: ApplyFn, variables: Variables, dataset: Any, *,
                     batch_size: int = 512, max_examples: int | None = None,
                     preprocess: Callable[[Array], Array] | None = None,
                     mean: Array | None = None, std: Array | None = None,
                     output: str | Sequence[str] | None = "rep",
                     sharding: jax.sharding.Sharding | None = None,
                     progress: str | None = None,
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Features of a data set under a frozen network in eval mode.

  ``feats[i] = apply_fn(variables, preprocess(images[i]))`` flattened, computed in
  jitted batches of a fixed shape ``[batch_size, ...]`` (the last batch is
  zero-padded and the padding dropped, so results do not depend on the batching).

  Args:
    apply_fn: ``apply_fn(variables, x) -> [b, r]`` (or a dict of outputs, then
      ``output`` picks one), eval mode, e.g. ``sslit.models.make_apply_fn(model)``.
      Static under jit: pass the same function object to reuse the compilation.
    variables: the network's variables (params and batch statistics).
    dataset: an ``sslit.data.Dataset`` (``get(indices)``, ``len``, ``.mean``,
      ``.std``) or a pair ``(images [N, ...], labels [N])`` of arrays.
    batch_size: examples per jitted call.
    max_examples: embed only the first ``max_examples`` examples.
    preprocess: ``preprocess(images) -> x``; default: :func:`preprocess` with
      ``mean``/``std``, or the data set's ``.mean``/``.std`` (for a pair of arrays,
      statistics of those arrays). For test data pass the training set's statistics.
    mean: per-channel mean overriding the data set's.
    std: per-channel standard deviation overriding the data set's.
    output: key to take when ``apply_fn`` returns a dict; a sequence of keys
      returns a dict of features, all from the same forward pass (e.g. with
      ``sslit.models.make_apply_fn(model, ("rep", "proj"))``).
    sharding: optional sharding for the input batches (e.g. batch-sharded over a
      data mesh from ``sslit.parallel``); ``batch_size`` must divide evenly.
    progress: a progress-bar label (None: no bar).

  Returns:
    ``(feats, labels)``: NumPy ``[N, r]`` (trailing axes flattened; a dict of
    them when ``output`` is a sequence) and ``[N]``.
  """
  src = as_source(dataset)
  n = len(src) if max_examples is None else min(int(max_examples), len(src))
  if n <= 0:
    raise ValueError(f"dataset is empty (len {len(src)}, max_examples "
                     f"{max_examples}): nothing to embed.")
  v.check_positive(batch_size, "batch_size")
  if preprocess is None:
    prep_fn = data_lib.preprocess
    mean, std = source_stats(src, mean, std)
  else:
    prep_fn = _UserPreprocess(preprocess)
    mean, std = np.float32(0.0), np.float32(1.0)
  if output is None:
    output = "rep"
  elif not isinstance(output, str):
    output = tuple(output)
    if not output:
      raise ValueError("output is an empty sequence: name at least one output.")
  if sharding is not None and hasattr(sharding, "mesh"):
    # Inputs split over the mesh: the variables must live on the same devices.
    variables = jax.device_put(variables, jax.sharding.NamedSharding(
        sharding.mesh, jax.sharding.PartitionSpec()))
  fn = functools.partial(_embed_batch, variables, mean=mean, std=std,
                         apply_fn=apply_fn, prep_fn=prep_fn, output=output)
  return batched_apply(lambda images: fn(images), src, n, int(batch_size),
                       sharding=sharding, progress=progress)


def _flatten_apply(variables, x):
  del variables
  return x.reshape(x.shape[0], -1)


def raw_pixel_features(dataset: Any, *, max_examples: int | None = None,
                       batch_size: int = 4096, mean: Array | None = None,
                       std: Array | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The raw-pixel baseline: preprocessed images, flattened.

  ``feats[i] = vec(preprocess(images[i], mean, std))``, the same input the
  networks see, so a probe on them measures what the pixels alone give.

  Args:
    dataset: as in :func:`extract_features`.
    max_examples: keep the first ``max_examples``.
    batch_size: images per batch.
    mean: per-channel mean (default: the data set's).
    std: per-channel standard deviation (default: the data set's).

  Returns:
    ``(feats [N, H·W·C] float32, labels [N])``.
  """
  return extract_features(_flatten_apply, {}, dataset, batch_size=batch_size,
                          max_examples=max_examples, mean=mean, std=std)


def _batch_images(batch):
  if isinstance(batch, Mapping):
    return batch["image"]
  if isinstance(batch, (tuple, list)):
    return batch[0]
  return batch


def calibrate_batch_stats(apply_train_fn: Callable, variables: Variables,
                          batches: Iterable[Any], *,
                          mean: Array | None = None, std: Array | None = None,
                          preprocess: Callable[[Array], Array] | None = None,
                          ) -> Variables:
  """Sets BatchNorm running statistics to their average over the given batches.

  Eval-mode BatchNorm of a freshly initialised network uses mean 0 and variance 1,
  i.e. it is the identity, which makes a random-init baseline unfairly weak. This
  sets every ``batch_stats`` leaf to the example-weighted average of the per-batch
  statistics the layer sees in train mode ("precise BN"), whatever the layer's
  momentum: for each batch the train-mode apply is run from zeroed statistics, which
  returns ``(1 − m)·B`` with ``B`` the batch's statistic; ``m`` is measured once per
  leaf from a second run from unit statistics (``m + (1 − m)·B``).

  Args:
    apply_train_fn: ``apply_train_fn(variables, x) -> (out, mutated)`` with
      ``mutated["batch_stats"]``, e.g.
      ``lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])``.
    variables: ``{"params": ..., "batch_stats": ...}``; returned unchanged when there
      are no batch statistics.
    batches: iterable of unaugmented image batches: arrays ``[b, H, W, C]``,
      ``(images, labels)`` pairs or ``{"image": ...}`` dicts.
    mean: per-channel mean for :func:`preprocess` (the training set's).
    std: per-channel standard deviation for :func:`preprocess`.
    preprocess: ``preprocess(images) -> x`` instead of mean/std; without either,
      batches must already be network inputs (float).

  Returns:
    A copy of ``variables`` with calibrated ``batch_stats``.
  """
  stats = variables.get("batch_stats") if isinstance(variables, Mapping) else None
  if not stats or not jax.tree.leaves(stats):
    return variables
  if preprocess is not None:
    prep = jax.jit(preprocess)
  elif mean is not None and std is not None:
    prep = jax.jit(functools.partial(data_lib.preprocess, mean=np.asarray(mean, np.float32),
                                     std=np.asarray(std, np.float32)))
  else:
    def prep(x):
      if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
        raise TypeError("batches hold integer images: pass mean= and std= (or "
                        "preprocess=) to turn them into network inputs.")
      return x

  @jax.jit
  def stats_from(start, x):
    _, mutated = apply_train_fn({**variables, "batch_stats": start}, x)
    return mutated["batch_stats"]

  zeros = jax.tree.map(jnp.zeros_like, stats)
  ones = jax.tree.map(jnp.ones_like, stats)
  keep, total, count = None, None, 0
  for batch in batches:
    x = prep(jnp.asarray(_batch_images(batch)))
    b = x.shape[0]
    s0 = stats_from(zeros, x)
    if keep is None:
      s1 = stats_from(ones, x)
      keep = jax.tree.map(lambda a, z: jnp.mean(a - z), s1, s0)
      if any(float(k) > 1.0 - 1e-6 for k in jax.tree.leaves(keep)):
        raise ValueError("a BatchNorm layer does not update its running statistics "
                         "in train mode (momentum 1): nothing to calibrate.")
    weighted = jax.tree.map(lambda s, k: b * s / (1.0 - k), s0, keep)
    total = weighted if total is None else jax.tree.map(jnp.add, total, weighted)
    count += b
  if count == 0:
    raise ValueError("batches is empty: at least one batch is needed to calibrate.")
  calibrated = jax.tree.map(lambda t, s: (t / count).astype(s.dtype), total, stats)
  return {**variables, "batch_stats": calibrated}


def calibration_batches(dataset: Any, *, num_batches: int = 10,
                        batch_size: int = 512, seed: int = 0):
  """Yields ``num_batches`` seeded random unaugmented image batches of a data set.

  Batches are drawn without replacement (until the data set runs out).
  """
  src = as_source(dataset)
  n = len(src)
  perm = np.random.default_rng(seed).permutation(n)
  bs = min(batch_size, n)
  for i in range(num_batches):
    idx = perm[i * bs:(i + 1) * bs]
    if len(idx) < bs:
      return
    yield src.get(np.sort(idx))[0]


def random_init_variables(model: Any, key: jax.Array, dataset: Any, *,
                          num_batches: int = 10, batch_size: int = 512,
                          seed: int = 0) -> Variables:
  """A randomly initialised network with calibrated BatchNorm statistics.

  ``sslit.models.init_variables(model, key, x)`` followed by
  :func:`calibrate_batch_stats` on ``num_batches`` unaugmented training batches
  preprocessed with the data set's statistics: the random-init baseline.

  Args:
    model: an ``sslit.models`` module.
    key: ``jax.random.key`` for the initialisation.
    dataset: the training data set (``sslit.data.Dataset`` or arrays).
    num_batches: calibration batches.
    batch_size: calibration batch size.
    seed: seed of the batch draw.

  Returns:
    variables ``{"params", "batch_stats"}``.
  """

  src = as_source(dataset)
  mean, std = source_stats(src, None, None)
  x0 = data_lib.preprocess(np.asarray(src.get(np.arange(min(2, len(src))))[0]), mean, std)
  return calibrated_variables(model, models.init_variables(model, key, x0), src,
                              num_batches=num_batches, batch_size=batch_size, seed=seed)


def calibrated_variables(model: Any, variables: Variables, dataset: Any, *,
                         num_batches: int = 10, batch_size: int = 512,
                         seed: int = 0) -> Variables:
  """``variables`` with BatchNorm statistics calibrated on unaugmented batches.

  :func:`calibrate_batch_stats` of ``model``'s training application on
  ``num_batches`` seeded batches of ``dataset`` (:func:`calibration_batches`),
  preprocessed with the data set's statistics: how the random-init baseline is
  calibrated, for any variables (e.g. a trained network's).
  """
  src = as_source(dataset)
  mean, std = source_stats(src, None, None)
  apply_train = functools.partial(model.apply, train=True, mutable=["batch_stats"])
  return calibrate_batch_stats(
      apply_train, variables,
      calibration_batches(src, num_batches=num_batches, batch_size=batch_size,
                          seed=seed), mean=mean, std=std)


def infer_num_classes(src, labels):
  nc = getattr(src, "num_classes", None)
  return int(nc) if nc else int(np.max(labels)) + 1


def subset_indices(size: int, num: int | None, seed: int) -> np.ndarray:
  """The sorted indices of the seeded subset the evaluators and the monitor use.

  ``num`` of ``range(size)`` drawn without replacement (all of it when ``num`` is
  None or at least ``size``).
  """
  if num is None or num >= size:
    return np.arange(size)
  return np.sort(np.random.default_rng(seed).choice(size, int(num), replace=False))


def subset(src, num: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """A fixed seeded subset (sorted indices) of a data set, loaded into memory."""
  images, labels = src.get(subset_indices(len(src), num, seed))
  return np.asarray(images), np.asarray(labels)
