"""Information monitoring of a network during training and in ``sslit analyze``.

:func:`make_monitor` returns an evaluator ``monitor(step, variables) -> {name:
value}`` that records, on a fixed seeded held-out subset, every term of the
generalization bound (``sslit.bound``), the entropy estimates of the
representation (Gaussian surrogate, LogDet, pairwise KL / Bhattacharyya bounds of
``sslit.estimators``), the effective rank, VICReg's three terms and, optionally,
the CPA information quantities of ``sslit.cpa`` (SPEC §5–6).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sslit import augment as augment_lib
from sslit import bound as bound_lib
from sslit import cpa as cpa_lib
from sslit import estimators, features, objectives
from sslit.data import preprocess

Array = Any
Variables = Any
Evaluator = Callable[[int, Variables], dict]

__all__ = ["make_monitor", "write_random_init_values"]


def _as_output_map(apply_fn_map: Any) -> Callable[[Variables, Array], dict]:
  """One callable returning ``{name: [b, ...]}`` from any accepted form."""
  if isinstance(apply_fn_map, Mapping):
    fns = dict(apply_fn_map)
    return lambda variables, x: {k: f(variables, x) for k, f in fns.items()}

  def as_dict(variables, x):
    out = apply_fn_map(variables, x)
    return dict(out) if isinstance(out, Mapping) else {"rep": out}

  return as_dict


_DETERMINANTS = ("entropy_gaussian", "logdet_corr")


def _float64_determinants(z: Any) -> dict:
  """``entropy_gaussian`` and ``logdet_corr`` of ``z`` upcast to float64."""
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
  """The monitor's two-view function: a preset name, ``(cfg_a, cfg_b)`` or a callable."""
  if augment is None or callable(augment):
    return augment
  if isinstance(augment, str):
    cfg_a, cfg_b = augment_lib.preset(augment, image_size=image_shape[0])
  else:
    cfg_a, cfg_b = augment
  # Compiled as one program: op by op, the views' ~100 small programs took 5 s of a
  # run's set-up on a 2-core CPU.
  return jax.jit(lambda key, images: augment_lib.two_views(key, images, cfg_a, cfg_b))


def make_monitor(apply_fn_map: Any, dataset: Any, *, num_examples: int = 1024,
                 augment: Any = "vicreg", seed: int = 0,
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
  * ``entropy_gaussian`` (``gaussian_surrogate_entropy``; in float64, see
    ``float64_determinants``),
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
    see ``float64_determinants``). When ``n ≤ k`` (the subset has no more
    examples than the output has dimensions) both are undefined (the sample
    covariance is singular): they are left out and ``{prefix}{o}/undefined`` says
    why, so no −inf reaches a table or a plot;
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
    augment: ``sslit.augment`` preset name, ``(cfg_a, cfg_b)`` of ``AugmentConfig``,
      or ``views(key, images) -> (x_a, x_b)``
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
  bound_mod = bound_lib if bound and augment is not None else None
  cpa_mod = cpa_lib if cpa_fn is not None else None
  src = features.as_source(dataset)
  if num_examples < 8:
    raise ValueError(f"num_examples must be >= 8, got {num_examples}.")
  mean, std = features.source_stats(src, mean, std)
  images, labels = features.subset(src, num_examples, seed)
  half = len(labels) // 2
  s_img, s_lab, t_lab = images[:half], labels[:half], labels[half:]
  num_classes = features.infer_num_classes(src, labels)
  views_fn = _views_fn(augment, images.shape[1:])
  if views_fn is not None:
    x_a, x_b = views_fn(jax.random.key(seed), jnp.asarray(s_img))
    x_a, x_b = np.asarray(x_a), np.asarray(x_b)
  out_map = _as_output_map(apply_fn_map)
  embed = jax.jit(lambda variables, x: {k: o.reshape(o.shape[0], -1) for k, o in
                                        out_map(variables, x).items()})
  mean_j, std_j = jnp.asarray(mean), jnp.asarray(std)
  embed_raw = jax.jit(lambda variables, imgs: embed(
      variables, preprocess(imgs, mean_j, std_j)))
  bound_kwargs = dict(bound_kwargs or {})
  vicreg_kwargs = dict(vicreg_kwargs or {})

  def view_terms(z, z_a, z_b):
    loss, aux = objectives.vicreg_loss(z_a, z_b, **vicreg_kwargs)
    out = {"vicreg": {"loss": loss, **aux}}
    if bound_mod is not None:
      out["bound"] = bound_mod.generalization_bound(
          z_a, z_b, z[:half], s_lab, z[half:], t_lab, y_u=s_lab, delta=delta,
          num_classes=num_classes, **bound_kwargs)
    return out

  # One program per output shape: eagerly, the VICReg terms and the bound compiled
  # op by op, 2 s of a run's first monitor call on a 2-core CPU.
  view_terms_jit = jax.jit(view_terms)

  def embed_all(variables, imgs):
    dummy = np.zeros(len(imgs), np.int32)
    feats, _ = features.batched_apply(lambda x: embed_raw(variables, x),
                              features.ArraySource(imgs, dummy, mean, std), len(imgs),
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
      n, k = z.shape
      if n <= k:
        # The sample covariance of n <= k examples is singular: its log-determinant
        # is -inf by construction, not a property of the network. Say so instead.
        values = {key: val for key, val in values.items() if key not in _DETERMINANTS}
        result[p + "undefined"] = (
            f"{', '.join(_DETERMINANTS)}: the covariance of n={n} examples in k={k} "
            f"dimensions is singular (needs n > k; raise the number of examples)")
      elif float64_determinants:
        values.update(_float64_determinants(clean[o]))
      result.update(_scalar_items(values, p))
      if views_fn is not None:
        z_a, z_b = jnp.asarray(za_all[o]), jnp.asarray(zb_all[o])
        terms = view_terms_jit(z, z_a, z_b)
        if "bound" in terms and not np.isfinite(float(terms["bound"]["bound"])):
          terms = view_terms(z, z_a, z_b)  # eagerly: raises, naming the culprit
        result.update(_scalar_items(terms, p))
    if cpa_mod is not None:
      fn = cpa_fn(variables)
      x = preprocess(s_img[:cpa_examples], mean_j, std_j)
      info = cpa_mod.representation_information(fn, x, sigma=cpa_sigma,
                                                **dict(cpa_kwargs or {}))
      result.update(_scalar_items(info, prefix + "cpa/"))
    return result

  return monitor


def write_random_init_values(path: str, monitor_fn: Evaluator, model: Any, dataset: Any, *,
                             seed: int = 0, num_batches: int = 10) -> dict:
  """A monitor's values for the network at random initialisation, as JSON at ``path``.

  The network is ``features.random_init_variables(model, jax.random.key(seed),
  dataset)`` (BatchNorm
  statistics calibrated on ``num_batches`` training batches): the probe's random-init
  baseline. A run report draws these values at step 0 as the reference.

  Returns:
    The record written: ``{"step": 0, "network": ..., name: value, ...}``.
  """
  import json  # pylint: disable=import-outside-toplevel
  variables = features.random_init_variables(model, jax.random.key(seed), dataset,
                                             num_batches=num_batches)
  record = {"step": 0, "network": "random init (BatchNorm statistics calibrated)"}
  record.update({k: (float(v) if np.ndim(v) == 0 and not isinstance(v, str) else v)
                 for k, v in dict(monitor_fn(0, variables)).items()})
  with open(path, "w") as f:
    json.dump(record, f, indent=2)
  return record
