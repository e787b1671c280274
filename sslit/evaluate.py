"""Evaluation of learned representations: features, linear probe, kNN, monitors.

The standard protocol of self-supervised learning, batched and jitted:

* :func:`preprocess` turns images into network inputs (the one function training
  and evaluation share, so both see the same pixels);
* :func:`extract_features` embeds a data set with a frozen network in eval mode;
* :func:`linear_probe` fits a multinomial logistic regression on frozen features
  (full-batch L-BFGS) and :func:`select_l2` picks its L2 strength on a validation
  split carved from the training set;
* :func:`knn_classify` / :func:`knn_evaluate` do the temperature-weighted cosine
  kNN vote of Wu et al. (2018);
* baselines: :func:`raw_pixel_features` and random-init networks whose BatchNorm
  running statistics are first calibrated (:func:`calibrate_batch_stats`);
* evaluators for ``train.fit`` (``evaluator(step, variables) -> dict[str, float]``):
  :func:`make_probe_evaluator` (kNN / small linear probe on a fixed subset) and
  :func:`make_monitor` (bound terms, entropy estimates, effective rank, VICReg terms
  on a fixed held-out subset).

Accuracies are percentages in ``[0, 100]``. Everything that touches arrays larger
than a batch runs inside ``jax.jit``; host loops are over batches only.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sslit import _validate as v

Array = Any
Variables = Any
ApplyFn = Callable[[Variables, Array], Any]
Evaluator = Callable[[int, Variables], dict]

# --------------------------------------------------------------------------- #
# Preprocessing and data access
# --------------------------------------------------------------------------- #


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


class _ArraySource:
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


def _as_source(dataset: Any):
  """A data set or an ``(images, labels)`` pair as something with ``get``/``len``."""
  if hasattr(dataset, "get") and hasattr(dataset, "__len__") and not isinstance(
      dataset, (tuple, list, dict)):
    return dataset
  if isinstance(dataset, (tuple, list)) and len(dataset) == 2:
    return _ArraySource(*dataset)
  raise TypeError(
      "dataset must be an sslit.data.Dataset (with get(indices) and len) or an "
      f"(images, labels) pair of arrays, got {type(dataset).__name__}.")


def _source_stats(src, mean, std):
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
  if isinstance(out, Mapping) and output is None:
    return {k: jnp.asarray(o).reshape(o.shape[0], -1) for k, o in out.items()}
  return _pick_output(out, output)


def _batched_apply(batch_fn: Callable, source, n: int, batch_size: int, *,
                   sharding=None) -> tuple[Any, np.ndarray]:
  """Applies ``batch_fn(images)`` to the first ``n`` examples, fixed batch shape.

  The last batch is padded with zeros to ``batch_size`` and the padding rows are
  dropped from the result. At most two batches are in flight, so the host reads the
  next batch while the device computes without queueing the whole data set.
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

  for start in range(0, n, bs):
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
                     output: str | None = "rep",
                     sharding: jax.sharding.Sharding | None = None,
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
    output: key to take when ``apply_fn`` returns a dict.
    sharding: optional sharding for the input batches (e.g. batch-sharded over a
      data mesh from ``sslit.parallel``); ``batch_size`` must divide evenly.

  Returns:
    ``(feats, labels)``: NumPy ``[N, r]`` (trailing axes flattened) and ``[N]``.
  """
  src = _as_source(dataset)
  n = len(src) if max_examples is None else min(int(max_examples), len(src))
  if n <= 0:
    raise ValueError(f"dataset is empty (len {len(src)}, max_examples "
                     f"{max_examples}): nothing to embed.")
  v.check_positive(batch_size, "batch_size")
  if preprocess is None:
    prep_fn = _PREPROCESS
    mean, std = _source_stats(src, mean, std)
  else:
    prep_fn = _UserPreprocess(preprocess)
    mean, std = np.float32(0.0), np.float32(1.0)
  if output is None:
    output = "rep"
  if sharding is not None and hasattr(sharding, "mesh"):
    # Inputs split over the mesh: the variables must live on the same devices.
    variables = jax.device_put(variables, jax.sharding.NamedSharding(
        sharding.mesh, jax.sharding.PartitionSpec()))
  fn = functools.partial(_embed_batch, variables, mean=mean, std=std,
                         apply_fn=apply_fn, prep_fn=prep_fn, output=output)
  return _batched_apply(lambda images: fn(images), src, n, int(batch_size),
                        sharding=sharding)


_PREPROCESS = preprocess


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


# --------------------------------------------------------------------------- #
# Label and feature checks
# --------------------------------------------------------------------------- #


def _check_features_labels(x, y, num_classes, name_x, name_y):
  v.check_batch(x, name_x, min_n=1)
  y = np.asarray(y)
  if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"{name_y} must be a 1-D integer array [n], got shape "
                     f"{y.shape} and dtype {y.dtype}.")
  if y.shape[0] != np.shape(x)[0]:
    raise ValueError(f"{name_x} and {name_y} must have the same length, got "
                     f"{name_x} {tuple(np.shape(x))} and {name_y} {y.shape}.")
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f"{name_y} must lie in [0, num_classes={num_classes}), got "
                     f"values in [{y.min()}, {y.max()}].")
  if not np.all(np.isfinite(np.asarray(x))):
    raise ValueError(f"{name_x} contains NaN or inf.")


def _check_train_test(train_x, train_y, test_x, test_y, num_classes):
  if int(num_classes) != num_classes or num_classes < 2:
    raise ValueError(f"num_classes must be an integer >= 2, got {num_classes}.")
  _check_features_labels(train_x, train_y, num_classes, "train_x", "train_y")
  _check_features_labels(test_x, test_y, num_classes, "test_x", "test_y")
  if np.shape(train_x)[1] != np.shape(test_x)[1]:
    raise ValueError(f"train_x and test_x must have the same feature dimension, "
                     f"got train_x {tuple(np.shape(train_x))} and test_x "
                     f"{tuple(np.shape(test_x))}.")


def _float_dtype(x):
  return jnp.float64 if np.asarray(x).dtype == np.float64 and jax.config.jax_enable_x64 \
      else jnp.float32


# --------------------------------------------------------------------------- #
# Linear probe
# --------------------------------------------------------------------------- #


def standardize_stats(x: Array, *, eps: float = 1e-6) -> tuple[jax.Array, jax.Array]:
  """Per-feature mean and std (ddof = 0) of ``x [n, d]``; std < eps is set to 1.

  Constant features stay constant (zero) after standardisation instead of dividing by
  zero.
  """
  x = jnp.asarray(x)
  mean = jnp.mean(x, axis=0)
  std = jnp.std(x, axis=0)
  return mean, jnp.where(std < eps, 1.0, std)


@functools.partial(jax.jit, static_argnames=("num_classes", "memory_size"))
def _fit_logreg(x, y, l2, tol, steps, *, num_classes, memory_size):
  """Full-batch L-BFGS on mean cross-entropy + (l2/2)·‖W‖²."""
  n, d = x.shape
  onehot = jax.nn.one_hot(y, num_classes, dtype=x.dtype)

  # W is stored as [K, d]: the gradient is then gᵀx, which XLA:CPU computes about
  # three times faster than the xᵀg of a [d, K] layout (the probe's whole cost).
  def loss_fn(params):
    w_t, b = params
    logp = jax.nn.log_softmax(x @ w_t.T + b)
    return -jnp.sum(onehot * logp) / n + 0.5 * l2 * jnp.sum(w_t * w_t)

  opt = optax.lbfgs(memory_size=memory_size)
  params = (jnp.zeros((num_classes, d), x.dtype), jnp.zeros((num_classes,), x.dtype))
  state = opt.init(params)
  value_and_grad = optax.value_and_grad_from_state(loss_fn)

  def cond(carry):
    _, _, i, gnorm, ok = carry
    return (i < steps) & (gnorm > tol) & ok

  def body(carry):
    params, state, i, _, _ = carry
    value, grad = value_and_grad(params, state=state)
    updates, new_state = opt.update(grad, state, params, value=value, grad=grad,
                                    value_fn=loss_fn)
    new_params = optax.apply_updates(params, updates)
    # A failed line search can return non-finite steps: keep the last good iterate.
    ok = jnp.all(jnp.array([jnp.all(jnp.isfinite(p))
                            for p in jax.tree.leaves(new_params)]))
    params = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_params, params)
    state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_state, state)
    return params, state, i + 1, optax.tree.norm(grad), ok

  carry = (params, state, jnp.asarray(0, jnp.int32), jnp.asarray(jnp.inf, x.dtype),
           jnp.asarray(True))
  params, _, iters, _, _ = jax.lax.while_loop(cond, body, carry)
  loss, grad = jax.value_and_grad(loss_fn)(params)
  return (params[0].T, params[1]), loss, iters, optax.tree.norm(grad)


@functools.partial(jax.jit, static_argnames=("standardize",))
def _prepare(train_x, test_x, *, standardize):
  if not standardize:
    return train_x, test_x
  mean, std = standardize_stats(train_x)
  return (train_x - mean) / std, (test_x - mean) / std


@jax.jit
def _accuracy(params, x, y):
  w, b = params
  return 100.0 * jnp.mean(jnp.argmax(x @ w + b, axis=-1) == y)


def fit_logistic_regression(x: Array, y: Array, *, num_classes: int,
                            l2: float = 1e-4, steps: int = 300, tol: float = 1e-6,
                            memory_size: int = 10,
                            ) -> tuple[tuple[jax.Array, jax.Array], dict]:
  """Multinomial logistic regression by full-batch L-BFGS.

  Minimises ``(1/n) Σ_i −log softmax(W·x_i + b)[y_i] + (l2/2)·‖W‖_F²`` (the bias is
  not penalised), starting at zero, for at most ``steps`` L-BFGS iterations
  (``optax.lbfgs`` with its zoom line search, inside one ``jax.lax.while_loop``),
  stopping early once the gradient norm is ≤ ``tol``. This is scikit-learn's
  ``LogisticRegression(C=1/(n·l2))`` objective divided by ``C·n``.

  Args:
    x: ``[n, d]`` float features.
    y: ``[n]`` integer labels in ``[0, num_classes)``.
    num_classes: number of classes ``K``.
    l2: L2 strength on ``W`` (≥ 0).
    steps: maximum L-BFGS iterations.
    tol: gradient-norm stopping tolerance.
    memory_size: L-BFGS history length.

  Returns:
    ``((W [d, K], b [K]), info)`` with ``info`` = ``{"loss", "steps", "grad_norm"}``.
  """
  _check_features_labels(x, y, num_classes, "x", "y")
  v.check_positive(l2, "l2", allow_zero=True)
  v.check_positive(steps, "steps")
  dtype = _float_dtype(x)
  x = jnp.asarray(x, dtype)
  params, loss, iters, gnorm = _fit_logreg(
      x, jnp.asarray(y, jnp.int32), jnp.asarray(l2, dtype), jnp.asarray(tol, dtype),
      jnp.asarray(int(steps), jnp.int32), num_classes=int(num_classes),
      memory_size=int(memory_size))
  return params, {"loss": float(loss), "steps": int(iters),
                  "grad_norm": float(gnorm)}


def linear_probe(train_x: Array, train_y: Array, test_x: Array, test_y: Array, *,
                 num_classes: int, l2: float = 1e-4, steps: int = 300,
                 standardize: bool = True, tol: float = 1e-6,
                 memory_size: int = 10, return_params: bool = False) -> dict:
  """Linear-probe accuracy: logistic regression on frozen features.

  Features are standardised with the *training* mean and std (constant features left
  at zero), then :func:`fit_logistic_regression` fits ``W, b`` on the training set
  and ``top1 = 100 · mean(argmax(W·x + b) == y)`` is measured on the test set.

  Args:
    train_x: ``[n, d]`` training features.
    train_y: ``[n]`` integer labels.
    test_x: ``[m, d]`` test features.
    test_y: ``[m]`` integer labels.
    num_classes: number of classes.
    l2: L2 strength (see :func:`fit_logistic_regression`; choose it with
      :func:`select_l2`, never on the test set).
    steps: maximum L-BFGS iterations.
    standardize: standardise features with the training statistics first.
    tol: gradient-norm stopping tolerance.
    memory_size: L-BFGS history length.
    return_params: also return ``"params": (W, b)`` (in standardised units).

  Returns:
    ``{"top1", "train_top1"}`` in percent, ``"loss"`` (final training objective),
    ``"steps"`` (iterations run), ``"grad_norm"``, ``"l2"``.
  """
  _check_train_test(train_x, train_y, test_x, test_y, num_classes)
  dtype = _float_dtype(train_x)
  tr, te = _prepare(jnp.asarray(train_x, dtype), jnp.asarray(test_x, dtype),
                    standardize=bool(standardize))
  params, info = fit_logistic_regression(tr, train_y, num_classes=num_classes, l2=l2,
                                         steps=steps, tol=tol,
                                         memory_size=memory_size)
  out = {"top1": float(_accuracy(params, te, jnp.asarray(test_y))),
         "train_top1": float(_accuracy(params, tr, jnp.asarray(train_y))),
         **info, "l2": float(l2)}
  if return_params:
    out["params"] = params
  return out


def select_l2(train_x: Array, train_y: Array, *, num_classes: int,
              l2_grid: Sequence[float] = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6),
              val_fraction: float = 0.1, steps: int = 300, seed: int = 0,
              standardize: bool = True) -> dict:
  """Chooses the probe's L2 strength on a validation split of the training set.

  A seeded random ``val_fraction`` of the training examples is held out; a probe is
  fitted on the rest for each value of ``l2_grid`` and scored on the held-out part.
  The test set is never seen. Ties go to the larger L2.

  Args:
    train_x: ``[n, d]`` training features.
    train_y: ``[n]`` integer labels.
    num_classes: number of classes.
    l2_grid: candidate L2 strengths.
    val_fraction: fraction of the training set held out, in (0, 1).
    steps: maximum L-BFGS iterations per fit.
    seed: seed of the split.
    standardize: as in :func:`linear_probe` (statistics of the fitting part).

  Returns:
    ``{"l2": best, "val_top1": {l2: accuracy in percent}}``.
  """
  _check_features_labels(train_x, train_y, num_classes, "train_x", "train_y")
  if not 0.0 < val_fraction < 1.0:
    raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
  if not l2_grid:
    raise ValueError("l2_grid is empty.")
  n = np.shape(train_x)[0]
  n_val = int(round(n * val_fraction))
  if n_val < 1 or n - n_val < 2:
    raise ValueError(f"val_fraction={val_fraction} of n={n} leaves no validation "
                     "or no fitting examples.")
  perm = np.random.default_rng(seed).permutation(n)
  val, fit = perm[:n_val], perm[n_val:]
  x = np.asarray(train_x)
  y = np.asarray(train_y)
  scores = {}
  for l2 in sorted(l2_grid, reverse=True):
    res = linear_probe(x[fit], y[fit], x[val], y[val], num_classes=num_classes,
                       l2=l2, steps=steps, standardize=standardize)
    scores[float(l2)] = res["top1"]
  best = max(scores, key=lambda k: (scores[k], k))
  return {"l2": best, "val_top1": scores}


# --------------------------------------------------------------------------- #
# kNN
# --------------------------------------------------------------------------- #


@functools.partial(jax.jit, static_argnames=("num_classes", "ks", "chunk_size"))
def _knn_votes(train_x, train_y, test_x, temperature, *, num_classes, ks,
               chunk_size):
  """Top-1 and top-5 predictions for each k in ``ks``: ``[len(ks), m]``, ``[.., 5]``."""
  def normalize(z):
    return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)

  train_n = normalize(train_x)
  m = test_x.shape[0]
  num_chunks = -(-m // chunk_size)
  test_n = jnp.pad(normalize(test_x), ((0, num_chunks * chunk_size - m), (0, 0)))
  chunks = test_n.reshape(num_chunks, chunk_size, -1)
  kmax = max(ks)
  top = min(5, num_classes)
  rows = jnp.arange(chunk_size)[:, None]

  def one_chunk(chunk):
    sim = chunk @ train_n.T                       # [c, N_train]: one chunk at a time
    top_sim, top_idx = jax.lax.top_k(sim, kmax)
    labels = train_y[top_idx]
    weights = jnp.exp(top_sim / temperature)
    top1, top5 = [], []
    for k in ks:
      votes = jnp.zeros((chunk_size, num_classes), weights.dtype)
      votes = votes.at[rows, labels[:, :k]].add(weights[:, :k])
      top1.append(jnp.argmax(votes, axis=-1))
      top5.append(jax.lax.top_k(votes, top)[1])
    return jnp.stack(top1), jnp.stack(top5)

  top1, top5 = jax.lax.map(one_chunk, chunks)   # [chunks, len(ks), c(, 5)]
  top1 = jnp.moveaxis(top1, 1, 0).reshape(len(ks), -1)[:, :m]
  top5 = jnp.moveaxis(top5, 1, 0).reshape(len(ks), -1, top)[:, :m]
  return top1, top5


def knn_predict(train_x: Array, train_y: Array, test_x: Array, *, num_classes: int,
                k: int = 20, temperature: float = 0.07,
                chunk_size: int = 256) -> np.ndarray:
  """kNN class predictions (cosine similarity, temperature-weighted votes).

  For a test feature ``q``: ``s_j = cos(q, x_j)`` over the training set, the ``k``
  largest ``s_j`` vote for their labels with weights ``exp(s_j / temperature)``,
  and the class with the largest total wins (ties: the smallest class index).
  Similarities are computed for ``chunk_size`` test rows at a time, so memory is
  ``O(chunk_size · N_train)``, never ``N_test · N_train``.

  Args:
    train_x: ``[n, d]`` training features.
    train_y: ``[n]`` integer labels.
    test_x: ``[m, d]`` query features.
    num_classes: number of classes.
    k: neighbours (``1 ≤ k ≤ n``).
    temperature: vote temperature (> 0); 0.07 as in Wu et al. (2018) / DINO.
    chunk_size: test rows per similarity block.

  Returns:
    ``[m]`` predicted labels (NumPy int).
  """
  test_y = np.zeros(np.shape(test_x)[0], np.int32)
  _check_train_test(train_x, train_y, test_x, test_y, num_classes)
  top1, _ = _knn(train_x, train_y, test_x, num_classes, (int(k),), temperature,
                 chunk_size)
  return top1[0]


def _knn(train_x, train_y, test_x, num_classes, ks, temperature, chunk_size):
  n = np.shape(train_x)[0]
  for k in ks:
    if not 1 <= k <= n:
      raise ValueError(f"k must be in [1, n_train={n}], got k={k}.")
  v.check_positive(temperature, "temperature")
  v.check_positive(chunk_size, "chunk_size")
  dtype = _float_dtype(train_x)
  chunk = int(min(chunk_size, np.shape(test_x)[0]))
  top1, top5 = _knn_votes(jnp.asarray(train_x, dtype), jnp.asarray(train_y, jnp.int32),
                          jnp.asarray(test_x, dtype), jnp.asarray(temperature, dtype),
                          num_classes=int(num_classes), ks=tuple(ks),
                          chunk_size=max(chunk, 1))
  return np.asarray(top1), np.asarray(top5)


def knn_evaluate(train_x: Array, train_y: Array, test_x: Array, test_y: Array, *,
                 num_classes: int, ks: Sequence[int] = (20, 200),
                 temperature: float = 0.07, chunk_size: int = 256) -> dict:
  """kNN accuracies for several ``k`` from one similarity pass.

  Same vote as :func:`knn_predict`; the ``max(ks)`` nearest neighbours are found
  once and each ``k`` uses its first ``k`` of them.

  Args:
    train_x: ``[n, d]``; train_y: ``[n]``; test_x: ``[m, d]``; test_y: ``[m]``.
    num_classes: number of classes.
    ks: neighbour counts.
    temperature: vote temperature.
    chunk_size: test rows per similarity block.

  Returns:
    ``{"knn{k}_top1": percent, "knn{k}_top5": percent}`` for each ``k`` (top-5 only
    when ``num_classes > 5``).
  """
  _check_train_test(train_x, train_y, test_x, test_y, num_classes)
  ks = tuple(int(k) for k in ks)
  if not ks:
    raise ValueError("ks is empty.")
  top1, top5 = _knn(train_x, train_y, test_x, num_classes, ks, temperature,
                    chunk_size)
  y = np.asarray(test_y)
  out = {}
  for i, k in enumerate(ks):
    out[f"knn{k}_top1"] = float(100.0 * np.mean(top1[i] == y))
    if num_classes > 5:
      out[f"knn{k}_top5"] = float(100.0 * np.mean(np.any(top5[i] == y[:, None], -1)))
  return out


def knn_classify(train_x: Array, train_y: Array, test_x: Array, test_y: Array, *,
                 num_classes: int, k: int = 20, temperature: float = 0.07,
                 chunk_size: int = 256) -> dict:
  """kNN accuracy (cosine, temperature-weighted votes) of one ``k``.

  See :func:`knn_predict` for the vote.

  Returns:
    ``{"top1": percent}`` plus ``"top5"`` when ``num_classes > 5``.
  """
  res = knn_evaluate(train_x, train_y, test_x, test_y, num_classes=num_classes,
                     ks=(k,), temperature=temperature, chunk_size=chunk_size)
  return {key.split("_")[-1]: val for key, val in res.items()}


# --------------------------------------------------------------------------- #
# Random-init baseline: BatchNorm calibration
# --------------------------------------------------------------------------- #


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
    prep = jax.jit(functools.partial(_PREPROCESS, mean=np.asarray(mean, np.float32),
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
  src = _as_source(dataset)
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
  from sslit import models  # pylint: disable=import-outside-toplevel
  src = _as_source(dataset)
  mean, std = _source_stats(src, None, None)
  x0 = _PREPROCESS(np.asarray(src.get(np.arange(min(2, len(src))))[0]), mean, std)
  variables = models.init_variables(model, key, x0)
  apply_train = functools.partial(model.apply, train=True, mutable=["batch_stats"])
  return calibrate_batch_stats(
      apply_train, variables,
      calibration_batches(src, num_batches=num_batches, batch_size=batch_size,
                          seed=seed), mean=mean, std=std)


# --------------------------------------------------------------------------- #
# One-call evaluation
# --------------------------------------------------------------------------- #


def evaluate_representation(apply_fn: ApplyFn, variables: Variables,
                            train_data: Any, test_data: Any, *,
                            num_classes: int | None = None, batch_size: int = 512,
                            l2: float | str = 1e-4, steps: int = 300,
                            ks: Sequence[int] = (20, 200),
                            temperature: float = 0.07,
                            max_train: int | None = None,
                            max_test: int | None = None,
                            output: str | None = "rep",
                            sharding: jax.sharding.Sharding | None = None) -> dict:
  """Linear probe and kNN of a frozen network: the standard offline protocol.

  Features of both splits are extracted in eval mode with the *training* set's
  per-channel statistics, then :func:`linear_probe` and :func:`knn_evaluate` run.

  Args:
    apply_fn: eval-mode ``apply_fn(variables, x)``.
    variables: network variables.
    train_data: training data set or ``(images, labels)``.
    test_data: test data set or ``(images, labels)``.
    num_classes: default: ``train_data.num_classes`` or ``max(label) + 1``.
    batch_size: extraction batch size.
    l2: probe L2 strength, or ``"select"`` to choose it with :func:`select_l2`.
    steps: probe L-BFGS iterations.
    ks: kNN neighbour counts (empty: no kNN).
    temperature: kNN temperature.
    max_train: use the first ``max_train`` training examples.
    max_test: use the first ``max_test`` test examples.
    output: which output of a dict-returning ``apply_fn``.
    sharding: input-batch sharding for the extraction (see
      :func:`extract_features`).

  Returns:
    ``{"linear_top1", "linear_train_top1", "linear_l2", "knn{k}_top1", ...,
    "feature_dim"}``.
  """
  train_src = _as_source(train_data)
  mean, std = _source_stats(train_src, None, None)
  tr_x, tr_y = extract_features(apply_fn, variables, train_src, batch_size=batch_size,
                                max_examples=max_train, mean=mean, std=std,
                                output=output, sharding=sharding)
  te_x, te_y = extract_features(apply_fn, variables, test_data, batch_size=batch_size,
                                max_examples=max_test, mean=mean, std=std,
                                output=output, sharding=sharding)
  return evaluate_features(tr_x, tr_y, te_x, te_y,
                           num_classes=num_classes or _num_classes(train_src, tr_y),
                           l2=l2, steps=steps, ks=ks, temperature=temperature)


def evaluate_features(train_x, train_y, test_x, test_y, *, num_classes: int,
                      l2: float | str = 1e-4, steps: int = 300,
                      ks: Sequence[int] = (20, 200),
                      temperature: float = 0.07) -> dict:
  """Linear probe (optionally with :func:`select_l2`) and kNN on given features.

  Returns:
    ``{"linear_top1", "linear_train_top1", "linear_l2", "knn{k}_top1", ...}``.
  """
  if l2 == "select":
    l2 = select_l2(train_x, train_y, num_classes=num_classes, steps=steps)["l2"]
  elif isinstance(l2, str):
    raise ValueError(f"l2 must be a number or 'select', got {l2!r}.")
  lin = linear_probe(train_x, train_y, test_x, test_y, num_classes=num_classes,
                     l2=l2, steps=steps)
  out = {"linear_top1": lin["top1"], "linear_train_top1": lin["train_top1"],
         "linear_l2": float(l2), "feature_dim": int(np.shape(train_x)[1])}
  ks = [k for k in ks if k <= np.shape(train_x)[0]]
  if ks:
    out.update(knn_evaluate(train_x, train_y, test_x, test_y,
                            num_classes=num_classes, ks=ks, temperature=temperature))
  return out


def _num_classes(src, labels):
  nc = getattr(src, "num_classes", None)
  return int(nc) if nc else int(np.max(labels)) + 1


# --------------------------------------------------------------------------- #
# Evaluators for train.fit
# --------------------------------------------------------------------------- #


def subset_indices(size: int, num: int | None, seed: int) -> np.ndarray:
  """The sorted indices of the seeded subset the evaluators and the monitor use.

  ``num`` of ``range(size)`` drawn without replacement (all of it when ``num`` is
  None or at least ``size``).
  """
  if num is None or num >= size:
    return np.arange(size)
  return np.sort(np.random.default_rng(seed).choice(size, int(num), replace=False))


def _subset(src, num: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """A fixed seeded subset (sorted indices) of a data set, loaded into memory."""
  images, labels = src.get(subset_indices(len(src), num, seed))
  return np.asarray(images), np.asarray(labels)


def make_probe_evaluator(apply_fn: ApplyFn, train_data: Any, test_data: Any, *,
                         num_train: int | None = 10000, num_test: int | None = 2000,
                         ks: Sequence[int] = (20,), temperature: float = 0.07,
                         linear: bool = False, l2: float = 1e-4,
                         linear_steps: int = 100, batch_size: int = 512,
                         num_classes: int | None = None, seed: int = 0,
                         output: str | None = "rep",
                         sharding: jax.sharding.Sharding | None = None,
                         prefix: str = "probe/") -> Evaluator:
  """An evaluator ``(step, variables) -> {name: value}`` for a cheap probe.

  Fixed seeded subsets of ``num_train`` training and ``num_test`` test examples are
  loaded once; each call embeds them in eval mode (training-set statistics) and runs
  :func:`knn_evaluate` (and a short :func:`linear_probe` if ``linear``).
  ``sharding`` is passed to :func:`extract_features`.

  Returns:
    ``evaluator(step, variables) -> {f"{prefix}knn{k}_top1": ..., [
    f"{prefix}linear_top1"]}`` (percent).
  """
  train_src = _as_source(train_data)
  test_src = _as_source(test_data)
  mean, std = _source_stats(train_src, None, None)
  tr = _subset(train_src, num_train, seed)
  te = _subset(test_src, num_test, seed + 1)
  nc = num_classes or _num_classes(train_src, np.concatenate([tr[1], te[1]]))
  ks = tuple(int(k) for k in ks if k <= len(tr[1]))

  def evaluator(step: int, variables: Variables) -> dict:
    del step
    tr_x, tr_y = extract_features(apply_fn, variables, tr, batch_size=batch_size,
                                  mean=mean, std=std, output=output,
                                  sharding=sharding)
    te_x, te_y = extract_features(apply_fn, variables, te, batch_size=batch_size,
                                  mean=mean, std=std, output=output,
                                  sharding=sharding)
    out = {}
    if ks:
      out.update(knn_evaluate(tr_x, tr_y, te_x, te_y, num_classes=nc, ks=ks,
                              temperature=temperature))
    if linear:
      res = linear_probe(tr_x, tr_y, te_x, te_y, num_classes=nc, l2=l2,
                         steps=linear_steps)
      out["linear_top1"] = res["top1"]
    return {prefix + k: val for k, val in out.items()}

  return evaluator


def _as_output_map(apply_fn_map: Any) -> Callable[[Variables, Array], dict]:
  """One callable returning ``{name: [b, ...]}`` from any accepted form."""
  if isinstance(apply_fn_map, Mapping):
    fns = dict(apply_fn_map)
    return lambda variables, x: {k: f(variables, x) for k, f in fns.items()}

  def as_dict(variables, x):
    out = apply_fn_map(variables, x)
    return dict(out) if isinstance(out, Mapping) else {"rep": out}

  return as_dict


def _float64_determinants(z: Any) -> dict:
  """``entropy_gaussian`` and ``logdet_corr`` of ``z`` upcast to float64."""
  from sslit import estimators  # pylint: disable=import-outside-toplevel
  with jax.enable_x64(True):
    z64 = jnp.asarray(np.asarray(z, np.float64))
    return {"entropy_gaussian": float(estimators.gaussian_surrogate_entropy(z64)),
            "logdet_corr": float(estimators.correlation_logdet(z64))}


def _scalar_items(d: Mapping, prefix: str) -> dict:
  """Flattens a (nested) dict of results to ``{prefix + key: float}`` scalars."""
  out = {}
  for key, val in d.items():
    if isinstance(val, Mapping):
      out.update(_scalar_items(val, f"{prefix}{key}/"))
      continue
    try:
      arr = np.asarray(val)
    except Exception:  # pylint: disable=broad-except
      continue
    if arr.ndim == 0 and np.issubdtype(arr.dtype, np.number):
      out[prefix + str(key)] = float(arr)
  return out


def _views_fn(augment: Any, image_shape):
  """The two-view function of the monitor from a preset name or a callable."""
  if augment is None or callable(augment):
    return augment
  from sslit import augment as aug  # pylint: disable=import-outside-toplevel
  cfg_a, cfg_b = aug.preset(augment, image_size=image_shape[0])
  return lambda key, images: aug.two_views(key, images, cfg_a, cfg_b)


def make_monitor(apply_fn_map: Any, dataset: Any, *, num_examples: int = 1024,
                 augment: str | Callable | None = "vicreg", seed: int = 0,
                 outputs: Sequence[str] | None = None,
                 mean: Array | None = None, std: Array | None = None,
                 batch_size: int = 512, delta: float = 0.05,
                 bandwidth: float = 0.5, logdet_beta: float = 1.0,
                 bound: bool = True, bound_kwargs: Mapping | None = None,
                 vicreg_kwargs: Mapping | None = None,
                 cpa_fn: Callable[[Variables], Callable] | None = None,
                 cpa_examples: int = 8, cpa_sigma: float = 0.05,
                 cpa_kwargs: Mapping | None = None,
                 float64_determinants: bool = True,
                 prefix: str = "monitor/") -> Evaluator:
  """An evaluator recording information quantities on a fixed held-out subset.

  ``num_examples`` seeded examples of ``dataset`` (a held-out split) are loaded once
  and split in two halves S and T; two augmented views of S are drawn once with a
  fixed key, so every call sees the same inputs. Each call embeds the clean subset
  and the views in eval mode and records, for each output ``o`` of the network
  (keys ``f"{prefix}{o}/..."``):

  * ``effective_rank`` (``estimators.effective_rank``), ``std_mean`` (mean
    per-dimension std);
  * ``entropy_gaussian`` (``gaussian_surrogate_entropy``, −inf when the covariance
    is singular, e.g. ``n ≤ k``; in float64, see ``float64_determinants``),
    ``entropy_logdet`` (``logdet_entropy``, β =
    ``logdet_beta``);
  * pairwise mixture bounds on an equal-weight mixture of isotropic Gaussians centred
    on the clean embeddings with per-dimension variance ``σ² = bandwidth² · Σ_j
    Var(z_j)`` (relative to the total variance: the estimate follows the
    representation as it grows or shrinks, and the typical KL between components,
    ``E‖z_i − z_j‖²/(2σ²) ≈ 1/bandwidth²``, does not grow with the dimension, so
    the components neither all coincide nor all separate): ``entropy_pairwise_kl``
    (upper bound), ``entropy_pairwise_bhattacharyya`` (lower bound),
    ``entropy_conditional`` (``H(Z|n)``), ``mi_pairwise_kl`` /
    ``mi_pairwise_bhattacharyya`` (the bounds minus ``H(Z|n)``: bounds on the
    information the embedding keeps about the example, in ``[0, log n]``) and
    ``pairwise_var`` (``σ²``);
  * ``vicreg/...``: ``objectives.vicreg_loss`` and its aux terms on the two views;
  * ``logdet_corr``: ``estimators.correlation_logdet`` (log det of the correlation
    matrix, whose second-order expansion VICReg's covariance term is; in float64,
    see ``float64_determinants``);
  * ``bound/...``: every entry of ``bound.generalization_bound(z_u_a, z_u_b, z_s,
    y_s, z_t, y_t, y_u=...)`` with the views of S as the unlabeled pairs (their
    source labels as ``y_u``), clean S as the labeled set and clean T as held-out
    data;
  * ``cpa/...`` (if ``cpa_fn``): scalar entries of
    ``cpa.representation_information`` on the first ``cpa_examples`` inputs of S.

  Args:
    apply_fn_map: eval-mode network: ``f(variables, x) -> {name: [b, k]}`` (an
      array is named ``"rep"``), or a mapping ``{name: apply_fn}``.
    dataset: held-out data set or ``(images, labels)``; labels are needed for the
      bound.
    num_examples: subset size (≥ 8).
    augment: ``sslit.augment`` preset name, or ``views(key, images) -> (x_a, x_b)``
      (floats in [0, 1]), or None (no view-based terms).
    seed: seed of the subset and of the views.
    outputs: which outputs to monitor (default: all).
    mean: per-channel statistics for :func:`preprocess` (default: the data set's;
      pass the training set's).
    std: see ``mean``.
    batch_size: embedding batch size.
    delta: confidence of the bound.
    bandwidth: mixture-component standard deviation relative to the square root of
      the total variance (see above).
    logdet_beta: β of the LogDet estimator.
    bound: record the bound terms.
    bound_kwargs: extra keyword arguments of ``generalization_bound``.
    vicreg_kwargs: extra keyword arguments of ``vicreg_loss``.
    cpa_fn: ``cpa_fn(variables) -> f(x_one) -> z`` (e.g.
      ``lambda v: models.single_input_fn(model, v)``) to record CPA information.
      Expensive (per-input Jacobians, ``O(n² k³)`` pairwise bounds): keep
      ``cpa_examples`` small, or leave it off on CPU for wide representations.
    cpa_examples: inputs for the CPA quantities.
    cpa_sigma: input-noise σ for ``representation_information``.
    cpa_kwargs: extra keyword arguments of ``representation_information``.
    float64_determinants: compute ``entropy_gaussian`` and ``logdet_corr`` from the
      float32 embeddings upcast to float64 (under ``jax.enable_x64``). In float32
      the log-determinant of an ill-conditioned 1024-d projector's correlation
      matrix came out −inf although it is finite; the rest stays float32.
    prefix: key prefix.

  Returns:
    ``monitor(step, variables) -> dict[str, float]``.
  """
  # pylint: disable=import-outside-toplevel
  from sslit import estimators, objectives
  bound_mod = None
  if bound and augment is not None:
    from sslit import bound as bound_mod
  cpa_mod = None
  if cpa_fn is not None:
    from sslit import cpa as cpa_mod
  # pylint: enable=import-outside-toplevel
  src = _as_source(dataset)
  if num_examples < 8:
    raise ValueError(f"num_examples must be >= 8, got {num_examples}.")
  mean, std = _source_stats(src, mean, std)
  images, labels = _subset(src, num_examples, seed)
  half = len(labels) // 2
  s_img, s_lab, t_img, t_lab = images[:half], labels[:half], images[half:], labels[half:]
  num_classes = _num_classes(src, labels)
  views_fn = _views_fn(augment, images.shape[1:])
  if views_fn is not None:
    x_a, x_b = views_fn(jax.random.key(seed), jnp.asarray(s_img))
    x_a, x_b = np.asarray(x_a), np.asarray(x_b)
  out_map = _as_output_map(apply_fn_map)
  embed = jax.jit(lambda variables, x: {k: o.reshape(o.shape[0], -1) for k, o in
                                        out_map(variables, x).items()})
  mean_j, std_j = jnp.asarray(mean), jnp.asarray(std)
  embed_raw = jax.jit(lambda variables, imgs: embed(
      variables, _PREPROCESS(imgs, mean_j, std_j)))
  bound_kwargs = dict(bound_kwargs or {})
  vicreg_kwargs = dict(vicreg_kwargs or {})

  def embed_all(variables, imgs):
    dummy = np.zeros(len(imgs), np.int32)
    feats, _ = _batched_apply(lambda x: embed_raw(variables, x),
                              _ArraySource(imgs, dummy, mean, std), len(imgs),
                              batch_size)
    return feats

  @jax.jit
  def stats(z):
    k = z.shape[1]
    var = jnp.var(z, axis=0, ddof=1)
    sigma2 = bandwidth ** 2 * jnp.sum(var)
    h_cond = estimators.mixture_conditional_entropy(sigma2, k=k)
    h_kl = estimators.pairwise_entropy(z, sigma2, distance="kl")
    h_bhat = estimators.pairwise_entropy(z, sigma2, distance="bhattacharyya")
    out = {
        "effective_rank": estimators.effective_rank(z),
        "std_mean": jnp.mean(jnp.sqrt(var)),
        "entropy_logdet": estimators.logdet_entropy(z, beta=logdet_beta),
        "entropy_pairwise_kl": h_kl,
        "entropy_pairwise_bhattacharyya": h_bhat,
        "entropy_conditional": h_cond,
        "mi_pairwise_kl": h_kl - h_cond,
        "mi_pairwise_bhattacharyya": h_bhat - h_cond,
        "pairwise_var": sigma2,
    }
    if not float64_determinants:  # else from _float64_determinants, on the host
      out["entropy_gaussian"] = estimators.gaussian_surrogate_entropy(z)
      out["logdet_corr"] = estimators.correlation_logdet(z)
    return out

  def monitor(step: int, variables: Variables) -> dict:
    del step
    clean = embed_all(variables, images)
    names = list(clean) if outputs is None else list(outputs)
    missing = [o for o in names if o not in clean]
    if missing:
      raise ValueError(f"outputs {missing} not produced by the network (it returns "
                       f"{sorted(clean)}).")
    if views_fn is not None:
      za_all = embed_all(variables, x_a)
      zb_all = embed_all(variables, x_b)
    result = {}
    for o in names:
      z = jnp.asarray(clean[o])
      p = f"{prefix}{o}/"
      values = stats(z)
      if float64_determinants:
        values.update(_float64_determinants(clean[o]))
      result.update(_scalar_items(values, p))
      if views_fn is not None:
        z_a, z_b = jnp.asarray(za_all[o]), jnp.asarray(zb_all[o])
        loss, aux = objectives.vicreg_loss(z_a, z_b, **vicreg_kwargs)
        result[p + "vicreg/loss"] = float(loss)
        result.update(_scalar_items(aux, p + "vicreg/"))
        if bound_mod is not None:
          terms = bound_mod.generalization_bound(
              z_a, z_b, z[:half], s_lab, z[half:], t_lab, y_u=s_lab, delta=delta,
              num_classes=num_classes, **bound_kwargs)
          result.update(_scalar_items(terms, p + "bound/"))
    if cpa_mod is not None:
      fn = cpa_fn(variables)
      x = _PREPROCESS(s_img[:cpa_examples], mean_j, std_j)
      info = cpa_mod.representation_information(fn, x, sigma=cpa_sigma,
                                                **dict(cpa_kwargs or {}))
      result.update(_scalar_items(info, prefix + "cpa/"))
    return result

  return monitor
