"""LeJEPA: invariance to the global views' centroid plus SIGReg (sketched Gaussian test).

SIGReg (Sketched Isotropic Gaussian Regularization) pushes the embedding towards an
isotropic Gaussian ``N(0, I)``: each of ``M`` random unit directions ``a`` projects
the batch to ``n`` numbers ``a . z_i``, whose distance to ``N(0, 1)`` is the
Epps-Pulley statistic, a weighted ``L2`` distance between characteristic functions;
SIGReg averages it over the directions. An isotropic Gaussian is the maximum-entropy
law at a fixed second moment, so in the information-theoretic reading (SPEC section
3) SIGReg is an entropy-style term; unlike VICReg's it matches every moment.

This module imports only jax and the math modules of sslit.

References:
  Balestriero, LeCun. LeJEPA: Provable and Scalable Self-Supervised Learning
  Without the Heuristics. arXiv:2511.08544, 2025.
  Epps, Pulley. A test for normality based on the empirical characteristic
  function. Biometrika 70(3), 1983.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

import sslit._validate as _validate
from sslit.objectives import common

Array = jax.Array
Aux = dict[str, Array]

__all__ = ["epps_pulley", "sigreg_directions", "sigreg", "lejepa_loss"]


def _check_grid(num_points: Any, t_max: Any) -> None:
  if not isinstance(num_points, int) or num_points < 2:
    raise ValueError(f"num_points must be an int >= 2 (the trapezoidal rule's knots), "
                     f"got {num_points!r}.")
  _validate.check_positive(t_max, "t_max")


def epps_pulley(x: Array, *, num_points: int = 17, t_max: float = 5.0) -> Array:
  r"""Epps-Pulley statistic of each column of ``x`` against ``N(0, 1)``.

  With the empirical characteristic function ``phi_n(t) = mean_i exp(i t x_i)`` of a
  column (``n`` samples) and the standard normal's ``phi(t) = exp(-t^2 / 2)``,

  ``T = n * integral_{-t_max}^{t_max} |phi_n(t) - phi(t)|^2 w(t) dt``,
  ``w(t) = exp(-t^2 / 2)``,

  integrated by the trapezoidal rule on ``num_points`` equally spaced knots.
  ``|phi_n - phi|^2 = (mean cos(t x) - phi)^2 + (mean sin(t x))^2``. ``T`` is 0 for
  a sample whose characteristic function is the Gaussian one on the grid, and
  grows with ``n`` for any other law (the test's consistency). ``n`` is the global
  batch: under ``jax.jit`` with a batch-sharded ``x`` the means are all-reduced.

  Args:
    x: ``[n, M]`` float, one sample of ``n`` numbers per column.
    num_points: knots of the trapezoidal rule (the paper: 17).
    t_max: the integral runs over ``[-t_max, t_max]`` (the paper: 5).

  Returns:
    ``[M]`` statistics, float32 (or float64 for float64 input).

  Cost: O(n M num_points).
  """
  _validate.check_batch(x, "x", min_n=1)
  _check_grid(num_points, t_max)
  x = common.as_float(x)
  n = x.shape[0]
  t = jnp.linspace(-t_max, t_max, num_points, dtype=x.dtype)
  phi = jnp.exp(-0.5 * t * t)
  xt = x[:, :, None] * t  # [n, M, T]
  real = jnp.mean(jnp.cos(xt), axis=0) - phi
  imag = jnp.mean(jnp.sin(xt), axis=0)
  err = (real * real + imag * imag) * phi  # [M, T]
  dt = t[1] - t[0]
  integral = dt * (jnp.sum(err, axis=-1) - 0.5 * (err[:, 0] + err[:, -1]))
  return n * integral


def sigreg_directions(key: Array, dim: int, num_slices: int = 256) -> Array:
  """``num_slices`` random unit directions in ``R^dim``: ``[dim, num_slices]``.

  Standard normal columns scaled to unit norm (uniform on the sphere).
  """
  if not isinstance(dim, int) or dim < 1 or not isinstance(num_slices, int) \
      or num_slices < 1:
    raise ValueError(f"dim and num_slices must be positive ints, got dim={dim!r}, "
                     f"num_slices={num_slices!r}.")
  a = jax.random.normal(key, (dim, num_slices), jnp.float32)
  return a / jnp.linalg.norm(a, axis=0, keepdims=True)


def sigreg(z: Array, directions: Array, *, num_points: int = 17,
           t_max: float = 5.0) -> Array:
  r"""SIGReg: the Epps-Pulley statistic of ``z`` along each direction, averaged.

  ``sigreg(z, A) = mean_j epps_pulley(z A)[j]`` for unit columns ``A [k, M]``: by
  the Cramér-Wold theorem every 1-D projection of ``N(0, I_k)`` is ``N(0, 1)``, so
  the sketched statistic is 0 in expectation only near an isotropic Gaussian.

  Args:
    z: embeddings ``[n, k]``, float.
    directions: ``[k, M]`` unit columns (:func:`sigreg_directions`; draw new ones
      every step, as the paper does).
    num_points, t_max: the trapezoidal grid of :func:`epps_pulley`.

  Returns:
    Scalar.
  """
  _validate.check_batch(z, "z", min_n=1)
  _validate.check_rank(directions, 2, "directions", layout="[k, num_slices]")
  k = _validate.shape_of(z)[1]
  if _validate.shape_of(directions)[0] != k:
    raise ValueError(f"directions must be [k, M] with k = {k} for z of shape "
                     f"{_validate.shape_of(z)}, got {_validate.shape_of(directions)}.")
  z = common.as_float(z)
  return jnp.mean(epps_pulley(z @ directions.astype(z.dtype), num_points=num_points,
                              t_max=t_max))


def lejepa_loss(z: Array, *, key: Array, num_global: int = 2, lambd: float = 0.05,
                num_slices: int = 256, num_points: int = 17,
                t_max: float = 5.0) -> tuple[Array, Aux]:
  r"""LeJEPA: prediction of the global views' centroid plus SIGReg on every view.

  With ``c_i = mean_{g < num_global} z[g, i]`` (the centroid of the global views of
  sample ``i``) and ``A`` :func:`sigreg_directions` drawn from ``key`` (the same
  directions for every view),

  ``invariance = mean_{v, i, d} (c_i - z[v, i])_d^2`` over all ``m`` views,
  ``sigreg = mean_v sigreg(z[v], A)`` and
  ``loss = (1 - lambd) * invariance + lambd * sigreg``.

  Args:
    z: embeddings of all views ``[m, n, k]``, the ``num_global`` global views
      first, then the local ones, ``m >= 2``.
    key: typed PRNG key for the directions (the step's; ``sslit.methods`` method
      ``views`` passes a fresh one every step).
    num_global: views whose centroid is the target.
    lambd: weight of SIGReg, ``1 - lambd`` that of the invariance (the paper: 0.05).
    num_slices: random directions ``M`` (the paper's listing: 256).
    num_points: knots of the trapezoidal rule on ``[-t_max, t_max]`` (17).
    t_max: half-width of the integration interval (5).

  Returns:
    ``(loss, aux)``, aux with the unweighted ``invariance`` and ``sigreg``.

  Cost: O(m n k M + m n M num_points).

  References:
    Balestriero, LeCun. LeJEPA. arXiv:2511.08544, 2025 (section 4 and its
    algorithm listing).
  """
  m, _, k = common.check_views(z, "z", min_views=2)
  common.check_num_global(num_global, m, "z")
  if not 0.0 <= float(lambd) <= 1.0:
    raise ValueError(f"lambd must lie in [0, 1], got {lambd}.")
  z = common.as_float(z)
  directions = sigreg_directions(key, k, num_slices)
  centroid = jnp.mean(z[:num_global], axis=0)
  inv = jnp.mean(jnp.square(centroid[None] - z))
  reg = jnp.mean(jnp.stack([sigreg(z[v], directions, num_points=num_points,
                                   t_max=t_max) for v in range(m)]))
  return (1.0 - lambd) * inv + lambd * reg, {"invariance": inv, "sigreg": reg}
