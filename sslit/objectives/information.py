"""Entropy and information objectives: invariance minus an explicit entropy estimate.

``information_loss`` (SPEC 4: mean squared distance or cosine, minus a LogDet,
pairwise-distance or KoLeo estimate of ``H(Z)``), the same entropy added to BYOL
(``byol_information_loss``), and MMCR (the nuclear norm of the per-sample view
centroids: invariance and spread in one term). Pure functions of the global batch
returning ``(loss, aux)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import sslit._validate as _validate
from sslit.objectives import common
import sslit.estimators as estimators
from sslit.objectives import distillation, variance_covariance

Array = jax.Array
Aux = dict[str, Array]

__all__ = ['ENTROPY_ESTIMATORS', 'INVARIANCES', 'DEFAULT_ENTROPY_COEFF', 'DEFAULT_BYOL_ENTROPY_COEFF', 'information_loss', 'byol_information_loss', 'mmcr_loss']


ENTROPY_ESTIMATORS = ("logdet", "pairwise_kl", "pairwise_bhattacharyya", "koleo")
INVARIANCES = ("mse", "squared_distance", "cosine")

# The project's default entropy weights (the paper's values are not known). Chosen on
# a synthetic task (docs/objectives.md): large enough that the entropy term resists
# collapse, small enough that the invariance term still shapes the embedding.
# The pairwise estimates change by at most log n, LogDet by O(k) nats, hence the
# different magnitudes; with Adam only the ratio to sim_coeff matters.
# KoLeo (not tuned): DINOv2's weight 0.1 per unit of invariance loss, times sim_coeff.
DEFAULT_ENTROPY_COEFF = {"logdet": 1.0, "pairwise_kl": 100.0,
                         "pairwise_bhattacharyya": 400.0, "koleo": 2.5}
DEFAULT_BYOL_ENTROPY_COEFF = {"logdet": 0.02, "pairwise_kl": 1.0,
                              "pairwise_bhattacharyya": 1.0, "koleo": 0.1}


def _entropy(z: Array, *, entropy: str, beta: float, pairwise_variance: float | None,
             normalize: bool) -> tuple[Array, Array | float]:
  """The estimate in nats and its part that does not depend on ``z``."""
  k = z.shape[1]
  if entropy == "koleo":  # scale-free: normalises the rows itself
    return -estimators.koleo_loss(z), 0.0
  if normalize:
    z = common.l2_normalize(z) * jnp.sqrt(jnp.asarray(k, z.dtype))
  if entropy == "logdet":
    return estimators.logdet_entropy(z, beta=beta), 0.0
  variance = float(k) if pairwise_variance is None else pairwise_variance
  distance = entropy[len("pairwise_"):]
  h = estimators.pairwise_entropy(z, jnp.asarray(variance, z.dtype),
                                  distance=distance)
  # H(Z | n) = k/2 log(2 pi e sigma^2): the same for every z; left out of the loss so
  # that float32 keeps the resolution of the part that moves.
  return h, 0.5 * k * jnp.log(2 * jnp.pi * jnp.e * jnp.asarray(variance, z.dtype))


def _invariance(z_a: Array, z_b: Array, kind: str) -> Array:
  if kind == "mse":
    return common.mse(z_a, z_b)
  if kind == "squared_distance":
    return jnp.mean(jnp.sum(jnp.square(z_a - z_b), axis=1))
  return common.cosine_distance(z_a, z_b)


def _check_information_options(entropy, invariance, beta, pairwise_variance,
                               sim_coeff, entropy_coeff):
  _validate.check_choice(entropy, ENTROPY_ESTIMATORS, "entropy")
  _validate.check_choice(invariance, INVARIANCES, "invariance")
  _validate.check_positive(beta, "beta")
  if pairwise_variance is not None:
    _validate.check_positive(pairwise_variance, "pairwise_variance")
  common.check_coeffs(sim_coeff=sim_coeff, entropy_coeff=entropy_coeff)


def information_loss(z_a: Array, z_b: Array, *, entropy: str = "logdet",
                     sim_coeff: float = 25.0, entropy_coeff: float | None = None,
                     keep_variance_covariance: bool = False, std_coeff: float = 25.0,
                     cov_coeff: float = 1.0, gamma: float = 1.0, eps: float = 1e-4,
                     invariance: str = "mse", beta: float = 1.0,
                     pairwise_variance: float | None = None,
                     normalize: bool = False) -> tuple[Array, Aux]:
  r"""Invariance minus an explicit entropy estimate (Shwartz-Ziv et al., SPEC 4).

  ``loss = sim_coeff * invariance - entropy_coeff * (H(z_a) + H(z_b)) / 2``
  ``[+ std_coeff * variance + cov_coeff * covariance]`` (VICReg's terms, exactly as in
  :func:`vicreg_loss`, when ``keep_variance_covariance``; the default replaces them).

  Invariance (``invariance=``): ``"mse"`` = ``mean (z_a - z_b)^2`` over the ``n k``
  entries (VICReg's); ``"squared_distance"`` = ``mean_i |z_a[i] - z_b[i]|^2`` (``k``
  times mse, the Gaussian ``-E log q(z | z') = E|z - z'|^2 / (2 s^2)`` up to a
  constant); ``"cosine"`` = ``mean (2 - 2 cos)``.

  Entropy (``entropy=``), in nats, each branch separately:

  * ``"logdet"``: ``1/2 log det(I + beta C)``, C the unbiased covariance
    (:func:`sslit.estimators.logdet_entropy`); finite for ``n < k`` and at collapse.
  * ``"koleo"``: ``mean_i log rho_i``, ``rho_i`` the distance of row ``i`` to its
    nearest neighbour after scaling the rows to unit norm (minus DINOv2's KoLeo
    regulariser, :func:`sslit.estimators.koleo_loss`): the Kozachenko-Leonenko
    entropy estimate on the sphere up to a factor (the dimension) and a constant.
    Scale-free (``normalize`` does not change it); pair it with
    ``invariance="cosine"`` so that the whole loss is.
  * ``"pairwise_kl"`` / ``"pairwise_bhattacharyya"``: Kolchinsky-Tracey estimate
    (:func:`sslit.estimators.pairwise_entropy`) of the equal-weight mixture of
    ``N(z_i, sigma^2 I)`` over the batch rows, ``sigma^2 = pairwise_variance``
    (default ``k``, so the kernel sees the per-dimension mean squared distance:
    ``D_KL = mean_d (z_id - z_jd)^2 / 2``). KL gives an upper, Bhattacharyya a lower
    bound on the mixture entropy. The loss leaves out the constant
    ``H(Z | n) = k/2 log(2 pi e sigma^2)`` of this estimate (same gradient, better
    float32 resolution); ``aux`` reports the full estimate.

  Scale (why the loss does not run away): the LogDet estimate grows like
  ``k log c`` when ``z`` is scaled by ``c`` while ``"mse"``/``"squared_distance"``
  grow like ``c^2``, so along each direction with non-zero invariance the loss has a
  finite minimiser in the scale (it is bounded below only through that invariance: a
  direction that is exactly invariant would be scaled without end). The pairwise
  estimate is bounded (``<= H(component) + log n``), so it cannot run away at all.
  ``normalize=True`` estimates the entropy on the rows rescaled to norm ``sqrt(k)``
  (``sqrt(k) z / |z|``), which makes it bounded and scale-free; use it when the
  invariance term does not see the scale (``"cosine"``, BYOL).

  Args:
    z_a: embeddings of the first view, ``[n, k]``, float, ``n >= 2``.
    z_b: embeddings of the second view, ``[n, k]``.
    entropy: one of ``ENTROPY_ESTIMATORS``.
    sim_coeff: weight of the invariance term.
    entropy_coeff: weight of the mean entropy of the two branches; ``None`` takes
      the project's default for the estimator, ``DEFAULT_ENTROPY_COEFF``
      (logdet 1, pairwise_kl 100, pairwise_bhattacharyya 400, koleo 2.5).
    keep_variance_covariance: also add VICReg's variance and covariance terms.
    std_coeff: weight of VICReg's variance term (only if kept).
    cov_coeff: weight of VICReg's covariance term (only if kept).
    gamma: VICReg's target standard deviation (only if kept).
    eps: VICReg's variance epsilon (only if kept).
    invariance: ``"mse"``, ``"squared_distance"`` or ``"cosine"``.
    beta: LogDet's scale, ``1/beta`` is the variance below which a direction counts
      as noise.
    pairwise_variance: isotropic variance of each mixture component (pairwise
      estimators); ``None`` means ``k``.
    normalize: estimate the entropy on ``sqrt(k) z / |z|`` instead of ``z``.

  Returns:
    ``(loss, aux)``, aux with ``invariance``, ``entropy`` (the mean of the two),
    ``entropy_a``, ``entropy_b`` and, when kept, ``variance`` and ``covariance``.

  Cost: LogDet O(n k min(n, k) + min(n, k)^3); pairwise O(n^2 k).

  References:
    Shwartz-Ziv, Balestriero, Kawaguchi, Rudner, LeCun. NeurIPS 2023.
    Zhouyin, Liu. Understanding Neural Networks with Logarithm Determinant Entropy
    Estimator. 2021. Kolchinsky, Tracey. Estimating Mixture Entropy with Pairwise
    Distances. Entropy 2017.
  """
  _validate.check_pair(z_a, z_b)
  _check_information_options(entropy, invariance, beta, pairwise_variance,
                             sim_coeff, entropy_coeff)
  if entropy_coeff is None:
    entropy_coeff = DEFAULT_ENTROPY_COEFF[entropy]
  z_a, z_b = common.as_float(z_a), common.as_float(z_b)
  inv = _invariance(z_a, z_b, invariance)
  ent_kw = dict(entropy=entropy, beta=beta, pairwise_variance=pairwise_variance,
                normalize=normalize)
  (h_a, const), (h_b, _) = _entropy(z_a, **ent_kw), _entropy(z_b, **ent_kw)
  ent = (h_a + h_b) / 2
  loss = sim_coeff * inv - entropy_coeff * (ent - const)
  aux = {"invariance": inv, "entropy": ent, "entropy_a": h_a, "entropy_b": h_b}
  if keep_variance_covariance:
    _, vic = variance_covariance.vicreg_loss(z_a, z_b, gamma=gamma, eps=eps)
    loss = loss + std_coeff * vic["variance"] + cov_coeff * vic["covariance"]
    aux.update(variance=vic["variance"], covariance=vic["covariance"])
  return loss, aux


def byol_information_loss(p_a: Array, p_b: Array, t_a: Array, t_b: Array,
                          z_a: Array, z_b: Array, *, entropy: str = "logdet",
                          sim_coeff: float = 1.0,
                          entropy_coeff: float | None = None,
                          beta: float = 1.0, pairwise_variance: float | None = None,
                          normalize: bool = True) -> tuple[Array, Aux]:
  r"""BYOL plus an entropy estimate of the online projector outputs.

  ``loss = sim_coeff * (byol(p_a, t_b) + byol(p_b, t_a)) - entropy_coeff *
  (H(z_a) + H(z_b)) / 2``, with ``H`` as in :func:`information_loss`. BYOL's loss
  is blind to the scale of ``z``, so by default (``normalize=True``) the entropy is
  estimated on ``sqrt(k) z / |z|``: bounded, scale-free, and with unit mean squared
  entry, the range where ``beta = 1`` and ``pairwise_variance = k`` are informative.

  Args:
    p_a: online predictor outputs of view a, ``[n, k]``.
    p_b: online predictor outputs of view b, ``[n, k]``.
    t_a: target-network projections of view a, ``[n, k]`` (stop-gradient inside).
    t_b: target-network projections of view b, ``[n, k]``.
    z_a: online projector outputs of view a, ``[n, k']``.
    z_b: online projector outputs of view b, ``[n, k']``.
    entropy: one of ``ENTROPY_ESTIMATORS``.
    sim_coeff: weight of the BYOL term.
    entropy_coeff: weight of the mean entropy of the two branches; ``None`` takes
      ``DEFAULT_BYOL_ENTROPY_COEFF`` (logdet 0.02, pairwise 1, koleo 0.1).
    beta: LogDet's scale.
    pairwise_variance: component variance of the pairwise estimators (``None``:
      ``k'``).
    normalize: estimate the entropy on the rows rescaled to norm ``sqrt(k')``.

  Returns:
    ``(loss, aux)``, aux with ``invariance`` (the symmetrised BYOL term),
    ``entropy``, ``entropy_a``, ``entropy_b``.
  """
  _validate.check_pair(z_a, z_b)
  if _validate.shape_of(z_a)[0] != _validate.shape_of(p_a)[0]:
    raise ValueError(f"z_a and p_a must have the same batch size, got z_a: "
                     f"{_validate.shape_of(z_a)} and p_a: {_validate.shape_of(p_a)}.")
  _check_information_options(entropy, "cosine", beta, pairwise_variance, sim_coeff,
                             entropy_coeff)
  if entropy_coeff is None:
    entropy_coeff = DEFAULT_BYOL_ENTROPY_COEFF[entropy]
  inv, _ = distillation.byol_pair_loss(p_a, p_b, t_a, t_b)
  z_a, z_b = common.as_float(z_a), common.as_float(z_b)
  ent_kw = dict(entropy=entropy, beta=beta, pairwise_variance=pairwise_variance,
                normalize=normalize)
  (h_a, const), (h_b, _) = _entropy(z_a, **ent_kw), _entropy(z_b, **ent_kw)
  ent = (h_a + h_b) / 2
  loss = sim_coeff * inv - entropy_coeff * (ent - const)
  return loss, {"invariance": inv, "entropy": ent, "entropy_a": h_a,
                "entropy_b": h_b}


# ----------------------------------------------------------------------------------
# MMCR: the nuclear norm of the view centroids.


def _gram_spectrum(x: Array) -> tuple[Array, Array, bool]:
  """Singular values of ``[..., p, q]`` from the smaller Gram matrix, and its
  eigenvectors (``V`` when the Gram is ``x^T x``, ``U`` when it is ``x x^T``)."""
  p, q = x.shape[-2:]
  xt = jnp.swapaxes(x, -1, -2)
  right = q <= p
  lam, vecs = jnp.linalg.eigh(xt @ x if right else x @ xt)
  return jnp.sqrt(jnp.maximum(lam, 0.0)), vecs, right


@jax.custom_jvp
def _nuclear_norm(x: Array) -> Array:
  """``|x|_* = sum of singular values`` of ``[..., p, q]`` matrices.

  From the eigenvalues of the ``min(p, q)``-sized Gram matrix: on XLA:CPU an SVD of
  a 256 x 128 matrix cost 10-50x this ``eigh``. The Gram squares the condition
  number, so singular values below ``sqrt(eps) s_max`` are not resolved; their sum is
  what the nuclear norm needs, not each of them.
  """
  return jnp.sum(_gram_spectrum(x)[0], axis=-1)


@_nuclear_norm.defjvp
def _nuclear_norm_jvp(primals, tangents):
  # d|x|_* = <U V^T, dx>, U V^T = x V diag(1/s) V^T (or U diag(1/s) U^T x). Zero
  # singular values are left out: that is a subgradient, so the gradient stays
  # finite at collapse.
  (x,), (dx,) = primals, tangents
  s, vecs, right = _gram_spectrum(x)
  inv = jnp.where(s > 0, 1.0 / jnp.where(s > 0, s, 1.0), 0.0)[..., None, :]
  proj = (vecs * inv) @ jnp.swapaxes(vecs, -1, -2)
  polar = x @ proj if right else proj @ x
  return jnp.sum(s, axis=-1), jnp.sum(polar * dx, axis=(-2, -1))


def mmcr_loss(z_a: Array, z_b: Array, *more_views: Array,
              local_coeff: float = 0.0) -> tuple[Array, Aux]:
  r"""MMCR: minus the nuclear norm of the matrix of per-sample view centroids.

  Rows scaled to unit norm, ``c_i = mean_v z_v[i]``, ``C = [c_1; ...; c_n]``
  (``[n, k]``) and

  ``loss = -|C|_* + local_coeff * mean_i |[z_1[i]; ...; z_m[i]]|_*``

  (``|.|_*`` the nuclear norm, the sum of singular values). ``|c_i| <= 1`` with
  equality iff the views of sample ``i`` agree, and ``|C|_*`` is largest when the
  centroids are also orthogonal: invariance and spread in one term.

  Args:
    z_a: embeddings of the first view, ``[n, k]``, float, ``n >= 2``.
    z_b: embeddings of the second view, ``[n, k]``.
    *more_views: further views ``[n, k]`` (the paper uses up to 16).
    local_coeff: weight of the per-sample nuclear norm (``lambda``; 0 in the
      paper's main experiments).

  Returns:
    ``(loss, aux)``, aux with ``nuclear_norm`` (``|C|_*``), ``local_nuclear_norm``
    and ``centroid_norm`` (``mean_i |c_i|``, the invariance part).

  Cost: O(n k min(n, k) + min(n, k)^3): the singular values come from the eigenvalues
  of the smaller Gram matrix and the gradient ``U V^T`` from its eigenvectors (a
  custom JVP); see ``_nuclear_norm`` for the float32 resolution this trades.

  References:
    Yerxa, Kuang, Simoncelli, Chung. Learning Efficient Coding of Natural Images
    with Maximum Manifold Capacity Representations. NeurIPS 2023.
  """
  views = (z_a, z_b) + tuple(more_views)
  for v, z in enumerate(views[1:], start=1):
    _validate.check_pair(views[0], z, names=("z_a", f"view {v}"))
  common.check_coeffs(local_coeff=local_coeff)
  u = common.l2_normalize(jnp.stack([common.as_float(z) for z in views]))
  centroids = jnp.mean(u, axis=0)
  nuclear = _nuclear_norm(centroids)
  per_sample = jnp.swapaxes(u, 0, 1)  # [n, m, k]
  local = jnp.mean(_nuclear_norm(per_sample))
  if not local_coeff:  # only reported
    local = jax.lax.stop_gradient(local)
  centroid_norm = jnp.mean(jnp.linalg.norm(centroids, axis=-1))
  return -nuclear + local_coeff * local, {"nuclear_norm": nuclear,
                                          "local_nuclear_norm": local,
                                          "centroid_norm": centroid_norm}
