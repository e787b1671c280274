"""Generalization-bound terms computed from feature and label arrays (SPEC §6).

Setting: a representation ``f`` gives features; ``m`` unlabeled pairs of views
``(f(x⁺_j), f(x⁺⁺_j))``, a labeled set ``(Z_S, Y_S)`` of ``n`` examples on which a
linear head is fit by least squares, ``W = Z_S⁺ Y_S``, and a held-out labeled set on
which the loss ``ℓ(x, y) = ‖Wᵀ f(x) − y‖`` is measured. The bound is

    E ℓ  ≤  ‖W‖₂ Ĩ  +  (2/√m) ‖P_{Z_U} Y_U‖_F  +  (1/√n) ‖P_{Z_S} Y_S‖_F
            +  (2/√m) R̃_m  +  Q_{m,n}(δ),

the project's scale-consistent reconstruction of the paper's statement (the
derivation, its assumptions and which step is not a theorem are in ``docs/bound.md``).
Every term is in label units: scaling the features by any ``c > 0`` leaves every term,
the bound and the measured loss unchanged.

All functions take arrays, never a model, and are pure and jitted. The least-squares
fits never form the ``[n, n]`` projector ``P_Z = I − Z Z⁺``: they go through the
``[k, k]`` Gram matrix ``Zᵀ Z`` (a sum over the batch), so the same jitted functions run
on batch-sharded inputs, the compiler inserting the all-reduce. The module knows
nothing about devices.

Labels are one-hot float arrays ``[n, C]`` inside the math; ``generalization_bound``
also accepts integer class ids ``[n]`` and converts them.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sslit import _validate as V

__all__ = [
    "invariance",
    "least_squares_head",
    "label_residual",
    "head_loss",
    "rademacher_complexity",
    "confidence_term",
    "to_one_hot",
    "generalization_bound",
]

Array = jax.Array


# ----------------------------------------------------------------------------
# Input checks (static: shapes and dtypes only).


def _check_labels_2d(y: Any, name: str, n: int, z_name: str) -> None:
  V.check_rank(y, 2, name, layout="[n, C] (one-hot)")
  V.check_float(y, name)
  if V.shape_of(y)[0] != n:
    raise ValueError(
        f"{name} has {V.shape_of(y)[0]} rows (shape {V.shape_of(y)}) but {z_name} "
        f"has n={n}; features and labels must describe the same examples.")


def _check_rcond(rcond: float | None) -> None:
  if rcond is not None:
    V.check_positive(rcond, "rcond")


# ----------------------------------------------------------------------------
# Terms.


@jax.jit
def _invariance(z_a: Array, z_b: Array) -> Array:
  return jnp.mean(jnp.linalg.norm(z_a - z_b, axis=-1))


def invariance(z_a: Array, z_b: Array) -> Array:
  """Invariance of a representation on unlabeled pairs, in feature units.

  ``Ĩ = (1/m) Σ_j ‖z_a[j] − z_b[j]‖₂``.

  This raw term changes with the scale of the features; the term that enters the
  bound is ``‖W‖₂ · Ĩ`` (see ``generalization_bound``).

  Args:
    z_a: features of the first views ``[m, k]``.
    z_b: features of the second views ``[m, k]``, row ``j`` paired with ``z_a[j]``.

  Returns:
    Scalar mean Euclidean distance between paired rows.
  """
  V.check_pair(z_a, z_b, min_n=1)
  return _invariance(z_a, z_b)


def _default_rcond(n: int, k: int, dtype: Any) -> float:
  # NumPy's lstsq cut-off max(n, k)·eps on singular values, floored at 10·√eps: the
  # fit goes through the Gram matrix, whose eigenvalues (σ²) are accurate only to
  # about eps·σ_max², so smaller relative singular values cannot be resolved.
  eps = float(jnp.finfo(dtype).eps)
  return max(max(n, k) * eps, 10.0 * math.sqrt(eps))


def _checked_rcond(z: Array, y: Array, rcond: float | None) -> float:
  """Check a least-squares problem ``z [n, k]``, ``y [n, C]``; the cut-off to use."""
  V.check_batch(z, "z", min_n=1)
  n, k = V.shape_of(z)
  _check_labels_2d(y, "y", n, "z")
  _check_rcond(rcond)
  return _default_rcond(n, k, z.dtype) if rcond is None else float(rcond)


@functools.partial(jax.jit, static_argnames=("bias", "rcond"))
def _lstsq(z: Array, y: Array, *, bias: bool, rcond: float) -> tuple[Array, Array]:
  y = y.astype(z.dtype)
  if bias:
    # Least squares with an intercept equals least squares on centred data.
    mu_z = jnp.mean(z, axis=0)
    mu_y = jnp.mean(y, axis=0)
  else:
    mu_z = jnp.zeros(z.shape[1], z.dtype)
    mu_y = jnp.zeros(y.shape[1], z.dtype)
  # Without a bias, skip the (zero) centring: it would copy z.
  zc = z - mu_z if bias else z
  yc = y - mu_y if bias else y
  gram = zc.T @ zc
  evals, evecs = jnp.linalg.eigh(gram)
  keep = evals > (rcond**2) * jnp.max(evals)
  inv = jnp.where(keep, 1.0 / jnp.where(keep, evals, 1.0), 0.0)

  def solve(rhs):
    return evecs @ (inv[:, None] * (evecs.T @ rhs))

  w = solve(zc.T @ yc)
  # One step of iterative refinement: recovers the accuracy the Gram route loses
  # in float32 within the retained subspace.
  w = w + solve(zc.T @ (yc - zc @ w))
  b = mu_y - mu_z @ w
  return w, b


def least_squares_head(z: Array, y: Array, *, bias: bool = False,
                       rcond: float | None = None) -> tuple[Array, Array]:
  """Least-squares linear head ``W = Z⁺ Y`` (optionally with an intercept).

  Minimum-norm solution of ``min_W ‖Z W − Y‖_F`` (with ``bias=True``:
  ``min_{W,b} ‖Z W + 1 bᵀ − Y‖_F``, solved on centred ``Z, Y``). Computed from the
  ``[k, k]`` Gram matrix ``ZᵀZ`` by an eigendecomposition plus one refinement step;
  the ``[n, n]`` projector is never formed. Cost ``O(n k² + k³)``, memory
  ``O(k² + n C)`` beyond the inputs.

  Args:
    z: features ``[n, k]``, float.
    y: targets ``[n, C]``, float (one-hot labels for the bound).
    bias: fit an intercept ``b``.
    rcond: relative cut-off on the singular values of ``Z`` (centred if ``bias``):
      directions with ``σ ≤ rcond·σ_max`` are treated as zero, as in a
      pseudo-inverse. Default ``max(max(n, k)·eps, 10·√eps)`` of ``z``'s dtype
      (NumPy's lstsq default, floored because the Gram matrix squares σ).

  Returns:
    ``(w [k, C], b [C])``; ``b`` is zero when ``bias=False``. Predictions are
    ``z @ w + b``.
  """
  rc = _checked_rcond(z, y, rcond)
  return _lstsq(z, y, bias=bias, rcond=rc)


@functools.partial(jax.jit, static_argnames=("bias", "rcond"))
def _residual(z: Array, y: Array, *, bias: bool, rcond: float) -> Array:
  w, b = _lstsq(z, y, bias=bias, rcond=rcond)
  return jnp.linalg.norm(y.astype(z.dtype) - (z @ w + b))


def label_residual(z: Array, y: Array, *, bias: bool = False,
                   rcond: float | None = None) -> Array:
  """Frobenius norm of the least-squares label residual ``‖P_Z Y‖_F``.

  ``P_Z = I − Z Z⁺`` projects onto the orthogonal complement of the column space of
  ``Z`` (with ``bias=True``, of ``[Z, 1]``), so ``‖P_Z Y‖_F = min_W ‖Z W − Y‖_F``:
  zero when the labels are a linear function of the features, largest
  (``‖Y − Ȳ‖_F`` with a bias, ``‖Y‖_F`` without) when the representation collapses.
  The RMS residual per example is ``label_residual(z, y) / √n``.

  Args:
    z: features ``[n, k]``.
    y: one-hot labels (or any targets) ``[n, C]``, float.
    bias: include a constant column (an intercept).
    rcond: singular-value cut-off, see ``least_squares_head``.

  Returns:
    Scalar ``‖P_Z Y‖_F`` in label units.
  """
  rc = _checked_rcond(z, y, rcond)
  return _residual(z, y, bias=bias, rcond=rc)


@jax.jit
def _head_loss(w: Array, b: Array, z: Array, y: Array) -> Array:
  return jnp.mean(jnp.linalg.norm(z @ w + b - y.astype(z.dtype), axis=-1))


def head_loss(w: Array, b: Array, z: Array, y: Array) -> Array:
  """Mean loss of a linear head, ``(1/n) Σ_i ‖Wᵀ z_i + b − y_i‖₂``.

  Args:
    w: head weights ``[k, C]``.
    b: head intercept ``[C]`` (zeros for no intercept).
    z: features ``[n, k]``.
    y: one-hot labels ``[n, C]``, float.

  Returns:
    Scalar mean Euclidean loss (the left-hand side of the bound on held-out data).
  """
  V.check_batch(z, "z", min_n=1)
  n, k = V.shape_of(z)
  _check_labels_2d(y, "y", n, "z")
  V.check_rank(w, 2, "w", layout="[k, C]")
  if V.shape_of(w) != (k, V.shape_of(y)[1]):
    raise ValueError(f"w must have shape [k, C] = {(k, V.shape_of(y)[1])} for z "
                     f"{V.shape_of(z)} and y {V.shape_of(y)}, got {V.shape_of(w)}.")
  if V.shape_of(b) != (V.shape_of(y)[1],):
    raise ValueError(f"b must have shape [C] = {(V.shape_of(y)[1],)}, got "
                     f"{V.shape_of(b)}.")
  return _head_loss(w, b, z, y)


@jax.jit
def _rademacher(z_a: Array, z_b: Array, head_norm: Array, num_outputs: Array) -> Array:
  m = z_a.shape[0]
  sq = jnp.sum(jnp.square(z_a - z_b))
  return jnp.sqrt(2.0 * num_outputs) * head_norm * jnp.sqrt(sq) / m


def rademacher_complexity(z_a: Array, z_b: Array, *, head_norm: Array | float,
                          num_outputs: int) -> Array:
  """Empirical Rademacher complexity bound of the invariance class on ``m`` pairs.

  The class is the invariance of the linear read-outs of the features that the head
  can express, ``G = {(z⁺, z⁺⁺) ↦ ‖Aᵀ(z⁺ − z⁺⁺)‖₂ : A ∈ ℝ^{k×C}, ‖A‖_F ≤ B}``.
  With ``d_j = z_a[j] − z_b[j]``, Maurer's vector-contraction inequality (the
  Euclidean norm is 1-Lipschitz) and Jensen's inequality give the closed form

      R̂_m(G) = E_ε sup_{g∈G} (1/m) Σ_j ε_j g(d_j)
              ≤ (√2 / m) E_ε sup_A ⟨A, Σ_j d_j ε_jᵀ⟩_F        (ε_j ∈ {±1}^C)
              = (√2 B / m) E_ε ‖Σ_j d_j ε_jᵀ‖_F
              ≤ √(2C) · B · √(Σ_j ‖d_j‖²) / m,

  an upper bound on the empirical Rademacher complexity, deterministic (no
  Monte-Carlo noise), in label units (``B`` scales as 1/feature scale), decaying as
  ``1/√m`` for bounded ``d``. Valid for a class fixed before the pairs are seen:
  ``B`` comes from the labeled set, independent of the pairs. The backbone that
  produced the features is taken as given (arrays in, never a model).

  Args:
    z_a: features of the first views ``[m, k]``.
    z_b: features of the second views ``[m, k]``.
    head_norm: the norm budget ``B`` (the bound uses ``‖W‖_F`` of the head).
    num_outputs: ``C``, the number of head outputs (classes).

  Returns:
    Scalar upper bound on ``R̂_m(G)`` (not multiplied by √m; the bound's term
    ``(2/√m) R̃_m`` with ``R̃_m = √m R̂_m`` equals ``2 R̂_m``).
  """
  V.check_pair(z_a, z_b, min_n=1)
  V.check_positive(head_norm, "head_norm", allow_zero=True)
  if not isinstance(num_outputs, (int, np.integer)) or num_outputs < 1:
    raise ValueError(f"num_outputs must be a positive int, got {num_outputs!r}.")
  return _rademacher(z_a, z_b, jnp.asarray(head_norm, z_a.dtype),
                     jnp.asarray(num_outputs, z_a.dtype))


def _check_delta(delta: Any) -> None:
  try:
    d = float(delta)
  except Exception:  # traced: cannot check
    return
  if not (0.0 < d < 1.0) or not np.isfinite(d):
    raise ValueError(f"delta must lie in the open interval (0, 1), got {delta}.")


def confidence_term(loss_range: Array | float, *, m: int, n: int,
                    delta: float = 0.05) -> Array:
  """Confidence term ``Q_{m,n}(δ) = c (√(ln(2/δ)/(2m)) + √(ln(2/δ)/(2n)))``.

  Hoeffding-type deviation of a ``[0, c]``-valued average over ``m`` unlabeled and
  ``n`` labeled examples, each at level ``δ/2`` (a union bound gives ``1 − δ``).

  Args:
    loss_range: ``c``, a bound on the range of the loss (label units).
    m: number of unlabeled pairs.
    n: number of labeled examples.
    delta: failure probability, in (0, 1).

  Returns:
    Scalar ``Q`` in the units of ``c``.
  """
  _check_delta(delta)
  for name, v in (("m", m), ("n", n)):
    if not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"{name} must be a positive int, got {v!r}.")
  V.check_positive(loss_range, "loss_range", allow_zero=True)
  log_term = jnp.log(2.0 / jnp.asarray(delta, jnp.result_type(float)))
  return jnp.asarray(loss_range) * (jnp.sqrt(log_term / (2 * m)) +
                                    jnp.sqrt(log_term / (2 * n)))


# ----------------------------------------------------------------------------
# Labels.


def to_one_hot(y: Any, *, num_classes: int | None = None, name: str = "y",
               dtype: Any = jnp.float32) -> Array:
  """Validate labels and return them one-hot ``[n, C]`` in ``dtype``.

  Accepts integer class ids ``[n]`` (``0 <= y < num_classes``; ``num_classes``
  defaults to ``max(y) + 1``) or one-hot rows ``[n, C]`` (entries 0/1, exactly one 1
  per row; float, int or bool). Value checks run only on concrete arrays (skipped
  under ``jit``).

  Raises:
    ValueError: wrong rank, a row that is not one-hot, an id out of range.
    TypeError: float class ids ``[n]``.
  """
  shape = V.shape_of(y)
  dt = y.dtype if hasattr(y, "dtype") else np.asarray(y).dtype
  concrete = not isinstance(y, jax.core.Tracer)
  if len(shape) == 1:
    if not (jnp.issubdtype(dt, jnp.integer) or jnp.issubdtype(dt, jnp.bool_)):
      raise TypeError(
          f"{name} of shape {shape} must hold integer class ids, got dtype {dt}; "
          f"pass int labels [n] or one-hot labels [n, C].")
    if num_classes is None:
      if not concrete:
        raise ValueError(f"num_classes is required to one-hot traced {name}.")
      num_classes = int(np.max(np.asarray(y))) + 1 if shape[0] else 1
    if concrete and shape[0]:
      yv = np.asarray(y)
      if yv.min() < 0 or yv.max() >= num_classes:
        raise ValueError(
            f"{name} holds class ids in [{yv.min()}, {yv.max()}], outside "
            f"[0, num_classes={num_classes}).")
    return jax.nn.one_hot(jnp.asarray(y), num_classes, dtype=dtype)
  if len(shape) == 2:
    if num_classes is not None and shape[1] != num_classes:
      raise ValueError(f"{name} is one-hot with C={shape[1]} columns (shape {shape}) "
                       f"but num_classes={num_classes}.")
    if concrete:
      yv = np.asarray(y)
      ok01 = np.all((yv == 0) | (yv == 1))
      if not ok01 or not np.all(yv.sum(axis=1) == 1):
        bad = int(np.flatnonzero(~(((yv == 0) | (yv == 1)).all(axis=1)
                                   & (yv.sum(axis=1) == 1)))[0])
        raise ValueError(
            f"{name} of shape {shape} is not one-hot: row {bad} is "
            f"{yv[bad].tolist()[:10]}; each row needs entries 0/1 with exactly one "
            f"1 (or pass int class ids [n]).")
    return jnp.asarray(y, dtype)
  raise ValueError(f"{name} must be int class ids [n] or one-hot [n, C], got shape "
                   f"{shape}.")


# ----------------------------------------------------------------------------
# The bound.


@functools.partial(jax.jit, static_argnames=("bias", "rcond_s", "rcond_u"))
def _bound_core(z_u_a, z_u_b, z_s, y_s, z_t, y_t, y_u, delta, *, bias, rcond_s,
                rcond_u):
  m = z_u_a.shape[0]
  n = z_s.shape[0]
  num_classes = y_s.shape[1]
  dtype = z_s.dtype
  w, b = _lstsq(z_s, y_s, bias=bias, rcond=rcond_s)
  spectral = jnp.linalg.norm(w, ord=2)
  frob = jnp.linalg.norm(w)

  inv = _invariance(z_u_a, z_u_b)
  invariance_term = spectral * inv

  if y_u is None:
    # Unknown labels of the unlabeled sources: the residual is at most ‖Y_U‖_F = √m
    # for one-hot rows (a projection does not increase the norm).
    res_u = jnp.sqrt(jnp.asarray(m, dtype))
  else:
    res_u = _residual(z_u_a, y_u, bias=bias, rcond=rcond_u)
  residual_unlabeled = res_u / jnp.sqrt(jnp.asarray(m, dtype))
  unlabeled_term = 2.0 * residual_unlabeled

  res_s = jnp.linalg.norm(y_s - (z_s @ w + b))
  residual_labeled = res_s / jnp.sqrt(jnp.asarray(n, dtype))
  labeled_term = residual_labeled

  rad = _rademacher(z_u_a, z_u_b, frob, jnp.asarray(num_classes, dtype))
  complexity_term = 2.0 * rad

  # Loss range from the data: ‖Wᵀz + b − y‖ ≤ ‖W‖₂‖z − μ‖ + ‖ȳ‖ + ‖y‖ (μ, ȳ the
  # centring of the fit; zero without a bias), over the features seen (labeled set
  # and both views); the ‖W‖-scaled invariance ‖W‖₂‖d_j‖ is covered too.
  mu = jnp.mean(z_s, axis=0) if bias else None
  def max_radius(z):
    return jnp.max(jnp.linalg.norm(z - mu if bias else z, axis=-1))

  radius = jnp.maximum(max_radius(z_s),
                       jnp.maximum(max_radius(z_u_a), max_radius(z_u_b)))
  offset = jnp.linalg.norm(jnp.mean(y_s, axis=0)) if bias else 0.0
  max_diff = jnp.max(jnp.linalg.norm(z_u_a - z_u_b, axis=-1))
  loss_range = jnp.maximum(spectral * radius + offset + 1.0, spectral * max_diff)
  log_term = jnp.log(2.0 / delta)
  confidence = loss_range * (jnp.sqrt(log_term / (2 * m)) +
                             jnp.sqrt(log_term / (2 * n)))

  bound = (invariance_term + unlabeled_term + labeled_term + complexity_term +
           confidence)
  test_loss = _head_loss(w, b, z_t, y_t)
  train_loss = _head_loss(w, b, z_s, y_s)
  return {
      "bound": bound,
      "test_loss": test_loss,
      "holds": bound >= test_loss,
      "invariance_term": invariance_term,
      "unlabeled_term": unlabeled_term,
      "labeled_term": labeled_term,
      "complexity_term": complexity_term,
      "confidence_term": confidence,
      "invariance": inv,
      "head_norm": spectral,
      "head_norm_fro": frob,
      "residual_unlabeled": residual_unlabeled,
      "residual_labeled": residual_labeled,
      "rademacher": rad * jnp.sqrt(jnp.asarray(m, dtype)),
      "loss_range": loss_range,
      "train_loss": train_loss,
  }


def generalization_bound(z_u_a: Array, z_u_b: Array, z_s: Array, y_s: Any,
                         z_t: Array, y_t: Any, *, y_u: Any = None,
                         delta: float = 0.05, bias: bool = False,
                         num_classes: int | None = None,
                         rcond: float | None = None) -> dict[str, Array]:
  """Every term of the generalization bound, their sum and the measured loss.

  With ``W = Z_S⁺ Y_S`` the least-squares head fit on the labeled set and
  ``ℓ(z, y) = ‖Wᵀ z + b − y‖₂``:

      bound = ‖W‖₂ Ĩ                          invariance_term
            + (2/√m) ‖P_{Z_U} Y_U‖_F          unlabeled_term
            + (1/√n) ‖P_{Z_S} Y_S‖_F          labeled_term
            + (2/√m) R̃_m                      complexity_term
            + c (√(ln(2/δ)/2m) + √(ln(2/δ)/2n))  confidence_term

  where ``Ĩ`` is ``invariance(z_u_a, z_u_b)``, ``Z_U = z_u_a`` with labels ``Y_U =
  y_u`` (the labels of the sources of the unlabeled pairs, unused in training; when
  not given, the residual takes its largest value ``‖Y_U‖_F = √m`` and the term is
  2), ``R̃_m = √m · rademacher_complexity(z_u_a, z_u_b, head_norm=‖W‖_F, C)`` and
  ``c = max(‖W‖₂ max_i‖z_i − μ‖ + ‖ȳ‖ + 1, ‖W‖₂ max_j‖z_u_a[j] − z_u_b[j]‖)`` the
  loss range computed from the features seen (``μ, ȳ`` the centring of the fit, 0
  without a bias). Every term is in label units and invariant to scaling the
  features by ``c > 0``. The constants are the project's reconstruction of SPEC §6;
  ``docs/bound.md`` derives them and states the assumptions.

  Args:
    z_u_a: features of the first views of the ``m`` unlabeled pairs ``[m, k]``.
    z_u_b: features of the second views ``[m, k]``.
    z_s: features of the ``n`` labeled examples the head is fit on ``[n, k]``.
    y_s: their labels: int class ids ``[n]`` or one-hot ``[n, C]``.
    z_t: features of held-out labeled examples ``[n_t, k]``.
    y_t: their labels, same encoding rules as ``y_s``.
    y_u: labels of the unlabeled pairs' sources ``[m]`` / ``[m, C]``, or None.
    delta: failure probability of the bound, in (0, 1).
    bias: fit the head with an intercept (``P_Z`` then projects out ``[Z, 1]``).
    num_classes: ``C``; inferred as ``max(label) + 1`` over all int labels, or from
      the one-hot width.
    rcond: singular-value cut-off of the least-squares fits (see
      ``least_squares_head``).

  Returns:
    Dict of scalar arrays: ``bound``, ``test_loss`` (mean loss of the head on
    ``(z_t, y_t)``), ``holds`` (bool, ``bound >= test_loss``), the five terms
    ``invariance_term``, ``unlabeled_term``, ``labeled_term``, ``complexity_term``,
    ``confidence_term``, and their ingredients ``invariance`` (Ĩ, feature units),
    ``head_norm`` (‖W‖₂), ``head_norm_fro`` (‖W‖_F), ``residual_unlabeled`` and
    ``residual_labeled`` (RMS residuals ‖P Y‖_F/√·), ``rademacher`` (R̃_m),
    ``loss_range`` (c), and ``train_loss`` (mean loss on the labeled set).

  Raises:
    ValueError: mismatched shapes or sample counts, labels that are not one-hot or
      out of range, different class counts, ``delta`` outside (0, 1), NaN or inf in
      the features (detected after the computation, naming the arrays).
    TypeError: non-float features, float class ids.
  """
  V.check_pair(z_u_a, z_u_b, min_n=1, names=("z_u_a", "z_u_b"))
  V.check_batch(z_s, "z_s", min_n=1)
  V.check_batch(z_t, "z_t", min_n=1)
  k = V.shape_of(z_s)[1]
  for name, z in (("z_u_a", z_u_a), ("z_t", z_t)):
    if V.shape_of(z)[1] != k:
      raise ValueError(f"{name} has k={V.shape_of(z)[1]} features (shape "
                       f"{V.shape_of(z)}) but z_s has k={k} (shape {V.shape_of(z_s)}).")
  dtypes = {jnp.dtype(z.dtype) for z in (z_u_a, z_u_b, z_s, z_t)}
  if len(dtypes) > 1:
    raise TypeError(f"z_u_a, z_u_b, z_s and z_t must share one float dtype, got "
                    f"{sorted(str(d) for d in dtypes)}.")
  _check_delta(delta)
  _check_rcond(rcond)
  labels = [("y_s", y_s, "z_s", z_s), ("y_t", y_t, "z_t", z_t)]
  if y_u is not None:
    labels.append(("y_u", y_u, "z_u_a", z_u_a))
  for name, y, z_name, z in labels:
    if len(V.shape_of(y)) not in (1, 2) or V.shape_of(y)[0] != V.shape_of(z)[0]:
      raise ValueError(f"{name} must have one row per example of {z_name} "
                       f"(n={V.shape_of(z)[0]}), got shape {V.shape_of(y)}.")
  if num_classes is None:
    widths = {V.shape_of(y)[1] for _, y, _, _ in labels if len(V.shape_of(y)) == 2}
    ints = [y for _, y, _, _ in labels if len(V.shape_of(y)) == 1]
    if len(widths) > 1:
      raise ValueError(f"one-hot labels disagree on the number of classes: "
                       f"{sorted(widths)}.")
    if widths:
      num_classes = widths.pop()
    elif all(not isinstance(y, jax.core.Tracer) for y in ints):
      num_classes = max(int(np.max(np.asarray(y))) + 1 for y in ints)
  dtype = z_s.dtype
  onehots = [to_one_hot(y, num_classes=num_classes, name=name, dtype=dtype)
             for name, y, _, _ in labels]
  m, n = V.shape_of(z_u_a)[0], V.shape_of(z_s)[0]
  rc_s = _default_rcond(n, k, dtype) if rcond is None else float(rcond)
  rc_u = _default_rcond(m, k, dtype) if rcond is None else float(rcond)
  y_u1 = onehots[2] if y_u is not None else None
  out = _bound_core(z_u_a, z_u_b, z_s, onehots[0], z_t, onehots[1], y_u1,
                    jnp.asarray(delta, dtype), bias=bias, rcond_s=rc_s, rcond_u=rc_u)
  bound = out["bound"]
  if not isinstance(bound, jax.core.Tracer) and not bool(jnp.isfinite(bound)):
    # Only on failure: find the culprit (one reduction per input).
    bad = [name for name, z in (("z_u_a", z_u_a), ("z_u_b", z_u_b), ("z_s", z_s),
                                ("z_t", z_t)) if not bool(jnp.all(jnp.isfinite(z)))]
    raise ValueError(f"the bound is not finite ({float(bound)}); non-finite values "
                     f"(NaN or inf) in {bad or 'no input: overflow in the features'}.")
  return out
