"""sslit: self-supervised learning seen through information theory, in JAX.

Submodules are imported on first use (``sslit.objectives``, ``sslit.cpa``, ...), so
``import sslit`` stays cheap and the math modules never pull in Flax or Optax.

Importing sslit also applies a work-around for a jaxlib < 0.11 hang on CPUs
(:func:`_serialize_cpu_lapack_on_import`, see ``docs/training.md``).
"""

import importlib
import os
import sys
import warnings

__version__ = "0.1.0"

_SUBMODULES = (
    "objectives", "methods", "estimators", "cpa", "bound", "mixture", "models", "augment",
    "sources", "data", "parallel", "checkpoint", "metrics", "optim", "step", "train",
    "features", "evaluate", "monitor", "figures", "report", "config", "runs", "cli",
    "torch_weights",
)

# jaxlib < 0.11: batched LAPACK kernels (Cholesky, eigh, triangular solves over a
# batch) split their batch over XLA's CPU thread pool and block waiting for it; when
# XLA's concurrency-optimised (breadth-first) schedule runs as many of them at once
# as the pool has threads, every thread waits and the program hangs. XLA's other
# (depth-first, memory-minimising) schedule makes that rarer but does not prevent it
# (loops beside their remainders still overlap); what prevents it is one matrix per
# LAPACK call, sslit.parallel.per_matrix (docs/training.md).
SERIAL_LAPACK_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
_FLAG_NAME = "xla_cpu_enable_concurrency_optimized_scheduler"
_warned = False


def _jaxlib_affected() -> bool:
  """Whether the installed jaxlib has the batched LAPACK hang (< 0.11)."""
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  try:
    major, minor = (int(v) for v in importlib.metadata.version("jaxlib").split(".")[:2])
  except Exception:  # pylint: disable=broad-except  # not installed, odd version
    return False
  return (major, minor) < (0, 11)


def _backend_started() -> bool:
  """Whether JAX has started an XLA backend, without importing JAX.

  JAX 0.10 has no public query for this; the backend table of the already imported
  bridge module is read (never imported from here), and a JAX that is not imported
  yet has started nothing.
  """
  bridge = sys.modules.get("jax._src.xla_bridge")
  return bool(getattr(bridge, "_backends", None)) if bridge is not None else False


def _serialize_cpu_lapack_on_import() -> bool:
  """Set ``SERIAL_LAPACK_FLAG`` in ``XLA_FLAGS`` if it can still take effect.

  Nothing is changed when ``XLA_FLAGS`` already names the option (the user's
  choice, ``=true`` included, wins) or on jaxlib >= 0.11. If JAX's backend has
  already started on a CPU, the flag can no longer take effect: one
  ``RuntimeWarning`` says how to set it.

  Returns:
    True if the flag is in ``XLA_FLAGS`` now and was set by this call.
  """
  global _warned
  flags = os.environ.get("XLA_FLAGS", "")
  if _FLAG_NAME in flags or not _jaxlib_affected():
    return False
  if not _backend_started():
    os.environ["XLA_FLAGS"] = (flags + " " + SERIAL_LAPACK_FLAG).strip()
    return True
  if not _warned and sys.modules["jax"].default_backend() == "cpu":
    _warned = True
    warnings.warn(
        f"sslit was imported after JAX started its CPU backend, so the jaxlib < 0.11 "
        f"work-around for batched LAPACK kernels that can hang on CPUs is not in "
        f"effect; import sslit before running anything with JAX, or start Python with "
        f"XLA_FLAGS={SERIAL_LAPACK_FLAG}", RuntimeWarning, stacklevel=3)
  return False


_serialize_cpu_lapack_on_import()


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"sslit.{name}")
  raise AttributeError(f"module 'sslit' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_SUBMODULES))
