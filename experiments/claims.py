"""Decisions of the experiments: verdicts, intervals and rank tests on plain numbers.

Every experiment states its criterion in its doc (section "Criterion (fixed before
the cpu-scale run)") and computes it with these pure functions, so that the tests
can feed them hand numbers and negative controls without training anything.

A verdict is one of ``HELD``, ``NOT_HELD``, ``UNDECIDED``; ``results.json`` stores
it as ``verdict`` (the string) and ``claim_held`` (``true`` / ``false`` / ``null``
for undecided).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

import numpy as np

HELD, NOT_HELD, UNDECIDED = "held", "not held", "undecided"
VERDICTS = (HELD, NOT_HELD, UNDECIDED)
ALPHA = 0.05
# Exact permutation tests enumerate at most this many orderings; beyond it a seeded
# Monte-Carlo sample of MC_PERMUTATIONS orderings estimates the p-value.
MAX_EXACT = 50_000
MC_PERMUTATIONS = 20_000


def as_flag(verdict: str) -> bool | None:
  """``claim_held`` of a verdict: True, False or None (undecided)."""
  if verdict not in VERDICTS:
    raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}.")
  return {HELD: True, NOT_HELD: False, UNDECIDED: None}[verdict]


def combine(verdicts: Sequence[str]) -> str:
  """All of several claims: not held if any is not held, held if all are held.

  An empty list is undecided (nothing was tested).
  """
  for v in verdicts:
    as_flag(v)
  if not verdicts:
    return UNDECIDED
  if NOT_HELD in verdicts:
    return NOT_HELD
  return HELD if all(v == HELD for v in verdicts) else UNDECIDED


def t_interval(values: Sequence[float], *, level: float = 0.95) -> dict[str, Any]:
  """Mean and two-sided Student-t confidence interval of ``values``.

  ``mean ± t_{(1+level)/2, n-1} · s / √n`` with ``s`` the sample std (ddof 1).

  Returns:
    ``{"n", "mean", "std", "low", "high", "level"}``; ``std``/``low``/``high`` are
    None with fewer than 2 values.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  a = np.asarray(values, np.float64)
  if a.ndim != 1 or not np.all(np.isfinite(a)):
    raise ValueError(f"values must be a finite 1-d sequence, got {values!r}.")
  out = {"n": int(a.size), "mean": float(a.mean()) if a.size else None, "std": None,
         "low": None, "high": None, "level": level}
  if a.size < 2:
    return out
  std = float(a.std(ddof=1))
  half = float(stats.t.ppf(0.5 + level / 2, a.size - 1)) * std / math.sqrt(a.size)
  out.update({"std": std, "low": out["mean"] - half, "high": out["mean"] + half})
  return out


def interval_verdict(interval: Mapping[str, Any], *, min_n: int = 3) -> str:
  """Held if the interval lies above 0, not held if below, else undecided.

  Undecided too with fewer than ``min_n`` values (no interval worth the name).
  """
  if interval["n"] < min_n or interval["low"] is None:
    return UNDECIDED
  if interval["low"] > 0:
    return HELD
  if interval["high"] < 0:
    return NOT_HELD
  return UNDECIDED


def paired_difference(variant: Sequence[float], base: Sequence[float], *,
                      min_n: int = 3, level: float = 0.95) -> dict[str, Any]:
  """``variant − base`` per seed, its t-interval and the verdict "variant > base".

  Args:
    variant: per-seed scores of the variant, ``[n]``.
    base: per-seed scores of the base method on the same seeds, ``[n]``.
    min_n: fewest seeds for a decision.
    level: confidence level of the interval.

  Returns:
    ``{"differences", "interval", "verdict"}``.
  """
  if len(variant) != len(base):
    raise ValueError(f"paired scores need the same seeds: {len(variant)} variant "
                     f"values vs {len(base)} base values.")
  diffs = [float(v) - float(b) for v, b in zip(variant, base)]
  interval = t_interval(diffs, level=level)
  return {"differences": diffs, "interval": interval,
          "verdict": interval_verdict(interval, min_n=min_n)}


def holm(pvalues: Sequence[float]) -> list[float]:
  """Holm's step-down adjusted p-values (family-wise error control).

  The i-th smallest of ``m`` p-values is multiplied by ``m - i`` (i from 0), the
  running maximum taken so the adjusted values keep the p-values' order, capped at 1.
  Returned in the input order.
  """
  p = np.asarray(pvalues, np.float64)
  if p.ndim != 1 or np.any((p < 0) | (p > 1)) or not np.all(np.isfinite(p)):
    raise ValueError(f"p-values must be a 1-d sequence in [0, 1], got {pvalues!r}.")
  order = np.argsort(p, kind="stable")
  m = p.size
  adjusted = np.empty(m)
  running = 0.0
  for i, j in enumerate(order):
    running = max(running, min(1.0, (m - i) * p[j]))
    adjusted[j] = running
  return adjusted.tolist()


def paired_test(variant: Sequence[float], base: Sequence[float]) -> dict[str, Any]:
  """Two-sided paired t-test and exact Wilcoxon signed-rank test of variant − base.

  Returns ``{"differences", "interval" (t_interval), "p_t", "p_wilcoxon"}``; the
  p-values are None with fewer than 2 pairs (or all differences 0 for Wilcoxon).
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  if len(variant) != len(base):
    raise ValueError(f"paired scores need the same seeds: {len(variant)} variant "
                     f"values vs {len(base)} base values.")
  diffs = [float(v) - float(b) for v, b in zip(variant, base)]
  out = {"differences": diffs, "interval": t_interval(diffs), "p_t": None,
         "p_wilcoxon": None}
  if len(diffs) >= 2 and np.std(diffs) > 0:
    out["p_t"] = float(stats.ttest_1samp(diffs, 0.0).pvalue)
  if len(diffs) >= 2 and any(d != 0 for d in diffs):
    out["p_wilcoxon"] = float(stats.wilcoxon(diffs, method="exact").pvalue)
  return out


def holm_verdicts(tests: Mapping[str, Mapping[str, Any]], *, alpha: float = ALPHA,
                  min_n: int = 3) -> dict[str, str]:
  """Per test (a :func:`paired_test`), held / not held / undecided after Holm.

  Held if the Holm-adjusted two-sided t p-value is below ``alpha`` and the mean
  difference is positive, not held if below ``alpha`` and negative, else undecided
  (also with fewer than ``min_n`` pairs or no p-value).
  """
  names = [n for n, t in tests.items()
           if t["p_t"] is not None and len(t["differences"]) >= min_n]
  adjusted = dict(zip(names, holm([tests[n]["p_t"] for n in names]))) if names else {}
  out = {}
  for n, t in tests.items():
    if n not in adjusted or adjusted[n] >= alpha:
      out[n] = UNDECIDED
    else:
      out[n] = HELD if t["interval"]["mean"] > 0 else NOT_HELD
  return out


def _ranks(v: np.ndarray) -> np.ndarray:
  from scipy import stats  # pylint: disable=g-import-not-at-top
  return stats.rankdata(v).astype(np.float64)


def _orderings(n: int, count: int, rng: np.random.Generator | None) -> np.ndarray:
  """Every permutation of ``range(n)`` (``rng`` None) or ``count`` random ones."""
  if rng is None:
    return np.asarray(list(itertools.permutations(range(n))), np.int64)
  return np.argsort(rng.random((count, n)), axis=1)


def _centred_ranks(v: np.ndarray) -> np.ndarray:
  r = _ranks(v)
  r = r - r.mean()
  return r / np.linalg.norm(r)


def rank_trend_test(pairs: Sequence[tuple[Sequence[float], Sequence[float]]], *,
                    seed: int = 0) -> dict[str, Any]:
  """Spearman's ρ of several (x, y) series and a permutation test of their mean.

  The statistic is the mean over series of Spearman's ρ (points where both values
  are finite; a series with fewer than 3 such points, or a constant one, is left
  out). Under the null hypothesis (no association: every ordering of each ``y``
  against its ``x`` equally likely, independently across series) its distribution
  is obtained by permuting each ``y``: exactly when the number of joint orderings is
  at most ``MAX_EXACT``, else from ``MC_PERMUTATIONS`` seeded random ones (then
  ``p = (1 + count) / (1 + draws)``).

  Args:
    pairs: ``[(x, y), ...]``, one pair per seed.
    seed: seed of the Monte-Carlo orderings.

  Returns:
    ``{"rho_mean", "rho_per_series", "n_per_series", "p_less", "p_greater",
    "method", "series_used"}``; ``rho_mean`` and the p-values are None when no
    series is usable. ``p_less`` is the one-sided p-value of "ρ < 0",
    ``p_greater`` of "ρ > 0".
  """
  xs, ys, rhos, ns = [], [], [], []
  for x, y in pairs:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
      raise ValueError(f"each pair needs two 1-d series of one length, got "
                       f"{x.shape} and {y.shape}.")
    ok = np.isfinite(x) & np.isfinite(y)
    ns.append(int(ok.sum()))
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
      rhos.append(None)
      continue
    rx, ry = _centred_ranks(x[ok]), _centred_ranks(y[ok])
    xs.append(rx)
    ys.append(ry)
    rhos.append(float(rx @ ry))
  out = {"rho_per_series": rhos, "n_per_series": ns, "series_used": len(xs),
         "rho_mean": None, "p_less": None, "p_greater": None, "method": None}
  if not xs:
    return out
  observed = float(np.mean([r for r in rhos if r is not None]))
  joint = math.prod(math.factorial(len(x)) for x in xs)
  exact = joint <= MAX_EXACT
  rng = None if exact else np.random.default_rng(seed)
  if exact:
    # Every joint ordering: the product of each series' permutations.
    per = [ry[_orderings(len(rx), 0, None)] @ rx for rx, ry in zip(xs, ys)]
    total = np.zeros(1)
    for rho_s in per:
      total = (total[:, None] + rho_s[None, :]).ravel()
    null = total / len(xs)
  else:
    null = np.mean([ry[_orderings(len(rx), MC_PERMUTATIONS, rng)] @ rx
                    for rx, ry in zip(xs, ys)], axis=0)
  tol = 1e-12
  less, greater = int(np.sum(null <= observed + tol)), int(np.sum(null >= observed - tol))
  if exact:
    p_less, p_greater = less / null.size, greater / null.size
  else:
    p_less = (1 + less) / (1 + null.size)
    p_greater = (1 + greater) / (1 + null.size)
  out.update({"rho_mean": observed, "p_less": float(p_less),
              "p_greater": float(p_greater),
              "method": "exact" if exact else f"monte-carlo ({MC_PERMUTATIONS})"})
  return out


def trend_verdict(test: Mapping[str, Any], *, direction: str, alpha: float = ALPHA,
                  min_series: int = 1) -> str:
  """Held if the rank test is significant in ``direction``, not held if it is in
  the opposite one, else undecided (also with fewer than ``min_series`` series).

  Args:
    test: a :func:`rank_trend_test` result.
    direction: ``"greater"`` (the claim is ρ > 0) or ``"less"`` (ρ < 0).
    alpha: one-sided significance level.
    min_series: fewest usable series for a decision.
  """
  if direction not in ("greater", "less"):
    raise ValueError(f"direction must be 'greater' or 'less', got {direction!r}.")
  if test["rho_mean"] is None or test["series_used"] < min_series:
    return UNDECIDED
  other = "less" if direction == "greater" else "greater"
  if test[f"p_{direction}"] < alpha:
    return HELD
  if test[f"p_{other}"] < alpha:
    return NOT_HELD
  return UNDECIDED


def control(*, name: str, what: str, verdict: str,
            evidence: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """One entry of ``summary["negative_controls"]`` (or ``"positive_controls"``).

  Args:
    name: a short identifier.
    what: one sentence: the real inputs the control ran on, and why the paper's
      mechanism is absent there (negative) or known to act (positive).
    verdict: the verdict of the claim's own criterion function on those inputs.
    evidence: the numbers the verdict came from.
  """
  as_flag(verdict)
  return {"name": name, "what": what, "verdict": verdict,
          "evidence": dict(evidence or {})}


def summary(*, claim: str, criterion: str, verdict: str, result: str,
            evidence: Mapping[str, Any] | None = None,
            negative_controls: Sequence[Mapping[str, Any]] = (),
            positive_controls: Sequence[Mapping[str, Any]] = (),
            extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The ``summary`` entry of an experiment's ``results.json``.

  What ``python -m experiments summary`` tabulates and recomputes: the claim, the
  criterion, the verdict (``claim_held`` too), a one-line result with the numbers,
  the evidence, and the controls (:func:`control` entries) judged by the same
  criterion function: a negative control (the paper's mechanism absent) must not
  come out "held"; a positive control (the effect present by construction) should.
  ``extra``: further entries (e.g. ``superseded``: an earlier criterion and its
  verdict, kept beside the one of record).
  """
  for c in list(negative_controls) + list(positive_controls):
    if set(c) != {"name", "what", "verdict", "evidence"}:
      raise ValueError(f"a control needs exactly name, what, verdict and evidence, "
                       f"got {sorted(c)}.")
    as_flag(c["verdict"])
  out = {"claim": claim, "criterion": criterion, "verdict": verdict,
         "claim_held": as_flag(verdict), "result": result,
         "evidence": dict(evidence or {}),
         "negative_controls": [dict(c) for c in negative_controls]}
  if positive_controls:
    out["positive_controls"] = [dict(c) for c in positive_controls]
  out.update(dict(extra or {}))
  return out
