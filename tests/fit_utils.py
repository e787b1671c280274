"""``run_fit(**kwargs)``: ``train.fit`` with its options given as keywords (tests only).

Splits the keywords into ``train.fit``'s own arguments and a ``train.FitOptions``,
so each test states only the options it varies.
"""

from __future__ import annotations

import os

import dataclasses

from sslit import train

_FIT_ARGS = ("model", "dataset", "workdir", "mesh", "evaluators", "data_iterator_fn")
OPTION_FIELDS = tuple(f.name for f in dataclasses.fields(train.FitOptions))


def run_fit(**kwargs) -> train.FitResult:
  unknown = sorted(set(kwargs) - set(_FIT_ARGS) - set(OPTION_FIELDS))
  if unknown:
    raise TypeError(f"unknown fit keywords {unknown}")
  options = {k: v for k, v in kwargs.items() if k in OPTION_FIELDS}
  args = {k: v for k, v in kwargs.items() if k in _FIT_ARGS}
  return train.fit(options=train.FitOptions(**options), **args)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(**extra) -> dict:
  """The environment of an ``sslit`` subprocess in the tests: this checkout on
  PYTHONPATH, CPU only, no inherited XLA_FLAGS; ``extra`` added."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
  env["JAX_PLATFORMS"] = "cpu"
  env.update(extra)
  return env
