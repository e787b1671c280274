"""``run_fit(**kwargs)``: ``train.fit`` with its options given as keywords (tests only).

Splits the keywords into ``train.fit``'s own arguments and a ``train.FitOptions``,
so each test states only the options it varies.
"""

from __future__ import annotations

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
