"""sslit: self-supervised learning seen through information theory, in JAX.

Submodules are imported on first use (``sslit.objectives``, ``sslit.cpa``, ...), so
``import sslit`` stays cheap and the math modules never pull in Flax or Optax.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "objectives", "estimators", "cpa", "bound", "models", "augment", "data",
    "parallel", "train", "evaluate", "checkpoint", "cli",
)


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"sslit.{name}")
  raise AttributeError(f"module 'sslit' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_SUBMODULES))
