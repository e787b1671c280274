"""Static input checks shared by the math modules.

Every public math function checks its inputs at the top, before tracing anything,
so that a wrong shape or dtype raises a ``ValueError``/``TypeError`` naming the
argument, its shape and the expected shape. Checks only read ``.shape`` and
``.dtype``, so they are free under ``jit`` (shapes are static there).

This module imports only numpy and jax.numpy, as the dependency rule requires.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np


def shape_of(x: Any) -> tuple[int, ...]:
  """The static shape of an array-like (Python scalars have shape ``()``)."""
  return tuple(np.shape(x))


def check_float(x: Any, name: str) -> None:
  """Raise ``TypeError`` unless ``x`` has a floating dtype (float16/32/64, bf16)."""
  dtype = jnp.result_type(x) if not hasattr(x, "dtype") else x.dtype
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
        f"{name} must have a floating dtype (float32 or float64), got {dtype}; "
        f"cast it first, e.g. {name}.astype(jnp.float32).")


def check_rank(x: Any, ndim: int | Sequence[int], name: str,
               layout: str | None = None) -> None:
  """Raise ``ValueError`` unless ``x.ndim`` is ``ndim`` (or one of them)."""
  allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
  shape = shape_of(x)
  if len(shape) not in allowed:
    want = layout or " or ".join(f"rank {r}" for r in allowed)
    raise ValueError(f"{name} must be {want}, got shape {shape}.")


def check_batch(z: Any, name: str, *, min_n: int = 2, floating: bool = True) -> None:
  """Check a batch of embeddings ``[n, k]`` with ``n >= min_n``."""
  check_rank(z, 2, name, layout="[n, k]")
  if floating:
    check_float(z, name)
  n = shape_of(z)[0]
  if n < min_n:
    raise ValueError(
        f"{name} has batch size n={n} (shape {shape_of(z)}); at least {min_n} "
        f"samples are needed.")


def check_same_shape(a: Any, b: Any, name_a: str, name_b: str) -> None:
  """Raise ``ValueError`` naming both shapes unless they are equal."""
  sa, sb = shape_of(a), shape_of(b)
  if sa != sb:
    raise ValueError(f"{name_a} and {name_b} must have the same shape, got "
                     f"{name_a}: {sa} and {name_b}: {sb}.")


def check_pair(z_a: Any, z_b: Any, *, min_n: int = 2,
               names: tuple[str, str] = ("z_a", "z_b")) -> None:
  """Check two views ``[n, k]`` of one batch: same shape, float, ``n >= min_n``."""
  check_batch(z_a, names[0], min_n=min_n)
  check_batch(z_b, names[1], min_n=min_n)
  check_same_shape(z_a, z_b, *names)


def check_positive(value: Any, name: str, *, allow_zero: bool = False) -> None:
  """Raise ``ValueError`` for a concrete number that is not > 0 (or >= 0).

  Traced values are let through (they cannot be inspected at trace time).
  """
  try:
    v = float(value)
  except Exception:  # a tracer or an array: cannot check statically
    return
  if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
    bound = ">= 0" if allow_zero else "> 0"
    raise ValueError(f"{name} must be {bound} and finite, got {value}.")


def check_choice(value: str, choices: Sequence[str], name: str) -> None:
  """Raise ``ValueError`` listing the valid choices for a string option."""
  if value not in choices:
    raise ValueError(f"unknown {name} {value!r}; choose one of {sorted(choices)}.")


def check_count(value: Any, name: str, *, minimum: int) -> None:
  """Raise ``ValueError`` unless ``value`` is a Python/NumPy integer ``>= minimum``."""
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
      or value < minimum):
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def check_sigma(sigma: Any, name: str = "sigma") -> None:
  """Raise ``ValueError`` for a concrete noise standard deviation that is not > 0.

  Traced values are let through (they cannot be inspected at trace time).
  """
  try:
    v = float(sigma)
  except Exception:  # a tracer or an array: cannot check statically
    return
  if not np.isfinite(v) or v <= 0:
    raise ValueError(f"{name} must be > 0 and finite (a standard deviation), got "
                     f"{sigma}.")
