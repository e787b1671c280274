"""Evaluation of learned representations: linear probe and kNN on frozen features.

The standard protocol of self-supervised learning, batched and jitted:

* :func:`linear_probe` fits a multinomial logistic regression on frozen features
  (full-batch L-BFGS) and :func:`select_l2` picks its L2 strength on a validation
  split carved from the training set;
* :func:`knn_evaluate` does the temperature-weighted cosine kNN vote of Wu et al.
  (2018) for several k from one similarity pass;
* :func:`evaluate_representation` / :func:`evaluate_features`: both probes of a
  network (features from ``sslit.features``, :func:`representation_features`) or
  of given features;
* :func:`make_probe_evaluator`: an evaluator for ``train.fit``
  (``evaluator(step, variables) -> dict[str, float]``) on fixed subsets.

The information monitor is ``sslit.monitor``; features, raw pixels and the
random-init baseline are ``sslit.features``. Accuracies are percentages in
``[0, 100]``. Everything that touches arrays larger than a batch runs inside
``jax.jit``; host loops are over batches only.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sslit import _validate as v
from sslit import features
from sslit.features import extract_features

Array = Any
Variables = Any
ApplyFn = Callable[[Variables, Array], Any]
Evaluator = Callable[[int, Variables], dict]

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
                 memory_size: int = 10, return_params: bool = False,
                 return_correct: bool = False) -> dict:
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
    return_correct: also return ``"correct"``: ``[m]`` booleans, the probe right on
      test example i (for paired intervals between probes on the same examples).

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
  if return_correct:
    w, b = params
    out["correct"] = np.asarray(jnp.argmax(te @ w + b, axis=-1) == jnp.asarray(test_y))
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
                 temperature: float = 0.07, chunk_size: int = 256,
                 return_predictions: bool = False) -> dict:
  """kNN accuracies (cosine similarity, temperature-weighted votes) for several ``k``.

  For a test feature ``q``: ``s_j = cos(q, x_j)`` over the training set, the ``k``
  largest ``s_j`` vote for their labels with weights ``exp(s_j / temperature)``,
  and the class with the largest total wins (ties: the smallest class index). The
  ``max(ks)`` nearest neighbours are found once and each ``k`` uses its first ``k``
  of them. Similarities are computed for ``chunk_size`` test rows at a time, so
  memory is ``O(chunk_size · N_train)``, never ``N_test · N_train``.

  Args:
    train_x: ``[n, d]`` training features.
    train_y: ``[n]`` integer labels.
    test_x: ``[m, d]`` query features.
    test_y: ``[m]`` labels of the queries.
    num_classes: number of classes.
    ks: neighbour counts (each ``1 ≤ k ≤ n``).
    temperature: vote temperature (> 0); 0.07 as in Wu et al. (2018) / DINO.
    chunk_size: test rows per similarity block.
    return_predictions: also return ``"predictions": {k: [m] labels}``.

  Returns:
    ``{"knn{k}_top1": percent, "knn{k}_top5": percent}`` for each ``k`` (top-5 only
    when ``num_classes > 5``), plus the predictions if asked.
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
  if return_predictions:
    out["predictions"] = {k: top1[i] for i, k in enumerate(ks)}
  return out


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
                            sharding: jax.sharding.Sharding | None = None,
                            return_correct: bool = False) -> dict:
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
    return_correct: also return ``"linear_correct"`` (see :func:`evaluate_features`).

  Returns:
    ``{"linear_top1", "linear_train_top1", "linear_l2", "knn{k}_top1", ...,
    "feature_dim"}``.
  """
  train_src = features.as_source(train_data)
  tr_x, tr_y, te_x, te_y = representation_features(
      apply_fn, variables, train_src, test_data, batch_size=batch_size,
      max_train=max_train, max_test=max_test, output=output, sharding=sharding)
  return evaluate_features(tr_x, tr_y, te_x, te_y,
                           num_classes=num_classes or features.infer_num_classes(train_src, tr_y),
                           l2=l2, steps=steps, ks=ks, temperature=temperature,
                           return_correct=return_correct)


def representation_features(apply_fn: ApplyFn, variables: Variables, train_data: Any,
                            test_data: Any, *, batch_size: int = 512,
                            max_train: int | None = None, max_test: int | None = None,
                            output: str | None = "rep",
                            sharding: jax.sharding.Sharding | None = None) -> tuple:
  """``(train_x, train_y, test_x, test_y)``: what :func:`evaluate_representation` probes.

  Both splits in eval mode, preprocessed with the *training* set's per-channel
  statistics (arguments as in :func:`evaluate_representation`).
  """
  train_src = features.as_source(train_data)
  mean, std = features.source_stats(train_src, None, None)
  kw = dict(batch_size=batch_size, mean=mean, std=std, output=output, sharding=sharding)
  return (*extract_features(apply_fn, variables, train_src, max_examples=max_train, **kw),
          *extract_features(apply_fn, variables, test_data, max_examples=max_test, **kw))


def evaluate_features(train_x, train_y, test_x, test_y, *, num_classes: int,
                      l2: float | str = 1e-4, steps: int = 300,
                      ks: Sequence[int] = (20, 200),
                      temperature: float = 0.07,
                      return_correct: bool = False) -> dict:
  """Linear probe (optionally with :func:`select_l2`) and kNN on given features.

  With ``return_correct``, also ``"linear_correct"``: ``[m]`` booleans, the linear
  probe right on test example i.

  Returns:
    ``{"linear_top1", "linear_train_top1", "linear_l2", "knn{k}_top1", ...}``.
  """
  if l2 == "select":
    l2 = select_l2(train_x, train_y, num_classes=num_classes, steps=steps)["l2"]
  elif isinstance(l2, str):
    raise ValueError(f"l2 must be a number or 'select', got {l2!r}.")
  lin = linear_probe(train_x, train_y, test_x, test_y, num_classes=num_classes,
                     l2=l2, steps=steps, return_correct=return_correct)
  out = {"linear_top1": lin["top1"], "linear_train_top1": lin["train_top1"],
         "linear_l2": float(l2), "feature_dim": int(np.shape(train_x)[1])}
  if return_correct:
    out["linear_correct"] = lin["correct"]
  ks = [k for k in ks if k <= np.shape(train_x)[0]]
  if ks:
    out.update(knn_evaluate(train_x, train_y, test_x, test_y,
                            num_classes=num_classes, ks=ks, temperature=temperature))
  return out


# --------------------------------------------------------------------------- #
# Evaluators for train.fit
# --------------------------------------------------------------------------- #


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
  train_src = features.as_source(train_data)
  test_src = features.as_source(test_data)
  mean, std = features.source_stats(train_src, None, None)
  tr = features.subset(train_src, num_train, seed)
  te = features.subset(test_src, num_test, seed + 1)
  nc = num_classes or features.infer_num_classes(train_src, np.concatenate([tr[1], te[1]]))
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


