"""Config files, overrides and the fields a run may change when it resumes.

A config is a Python file with ``get_config() -> ml_collections.ConfigDict``. The
configs that ship with sslit live in ``sslit/configs/`` (``default``: the main job,
``smoke``: seconds on the bundled digits); a bare name is looked up there first,
then in ``./experiments/configs/`` (the repository's paper-experiment configs).
Derived configs import their base as a module (``from sslit.configs import
default``); :func:`load_config` puts a config file's package root on ``sys.path``
so that ``from experiments.configs import recipe_base`` works from any directory.

This module imports no JAX: the command line reads the config (and sets the
virtual CPU device count) before JAX starts.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import importlib.util
import math
import os
import re
import sys
from typing import Any

import ml_collections

__all__ = ["ConfigError", "CONFIG_DIR", "DEFAULT_CONFIG", "RESUMABLE_FIELDS",
           "CHANGEABLE_ON_REQUEST",
           "load_config", "apply_overrides", "config_names", "all_fields", "to_dict",
           "plain", "with_defaults", "check_values"]

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "default.py")
# Where a bare config name is looked up, in order.
_SEARCH = (CONFIG_DIR, os.path.join("experiments", "configs"))
# Fields that may change between a run and its resumption: they do not change the
# training trajectory ("name" is a label: a renamed config with the same fields resumes).
RESUMABLE_FIELDS = ("name", "eval", "report", "max_train_seconds", "log_every",
                    "checkpoint_every", "keep_checkpoints", "eval_every", "data_dir",
                    "data_workers",
                    "monitor_every", "monitor_examples", "analysis")

# Optimisation settings that a run may resume with when asked explicitly
# (``sslit train ... --resume_with_changes``), e.g. a lower learning rate after the
# loss became non-finite. The model, the data, the batch and the optimizer's kind
# stay, so the checkpointed state still fits.
CHANGEABLE_ON_REQUEST = ("learning_rate", "warmup_steps", "end_lr_factor",
                         "weight_decay", "momentum", "grad_clip", "num_steps")


class ConfigError(ValueError):
  """A config or command-line mistake: unknown field, bad value, missing file."""


def config_names() -> list[str]:
  """The bare names that :func:`load_config` finds (shipped ones first)."""
  names = []
  for directory in _SEARCH:
    with contextlib.suppress(OSError):
      names += sorted(f[:-3] for f in os.listdir(directory)
                      if f.endswith(".py") and not f.startswith("_") and
                      f[:-3] not in names)
  return names


def _resolve_path(path: str) -> str:
  if path.endswith(".py") or os.sep in path or "/" in path:
    return path
  for directory in _SEARCH:
    candidate = os.path.join(directory, path + ".py")
    if os.path.isfile(candidate):
      return candidate
  return os.path.join(CONFIG_DIR, path + ".py")


def _package_root(path: str) -> str:
  """The directory above the outermost package holding ``path`` (or its own dir)."""
  directory = os.path.dirname(os.path.abspath(path))
  while os.path.isfile(os.path.join(directory, "__init__.py")):
    directory = os.path.dirname(directory)
  return directory


def load_config(path: str) -> ml_collections.ConfigDict:
  """Load ``get_config()`` from a config file or a bare config name.

  Args:
    path: a ``.py`` file, or a bare name (``smoke``) looked up in
      ``sslit/configs/`` and then ``./experiments/configs/``.

  Raises:
    ConfigError: the file is missing, has a syntax error or defines no
      ``get_config``.
  """
  path = _resolve_path(path)
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} not found; known configs: "
                      f"{', '.join(config_names())}.")
  root = _package_root(path)
  if root not in sys.path:
    sys.path.append(root)
  name = "_sslit_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f"config file {path!r} has a syntax error at line {e.lineno}: "
                      f"{e.msg}.") from None
  except ImportError as e:
    raise ConfigError(f"config file {path!r} cannot import its base: {e}.") from None
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path!r} defines no get_config().")
  try:
    config = module.get_config()
  except Exception as e:  # pylint: disable=broad-except  (the user's code)
    raise ConfigError(f"config file {path!r}: get_config() raised {type(e).__name__}: "
                      f"{e}") from e
  if isinstance(config, dict):
    config = ml_collections.ConfigDict(config)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"config file {path!r}: get_config() returned a "
                      f"{type(config).__name__}, not an ml_collections.ConfigDict.")
  return config


def all_fields(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every field of ``config``, dotted (``model.backbone``), groups included."""
  out = []
  for key, value in config.items():
    name = prefix + key
    out.append(name)
    if isinstance(value, ml_collections.ConfigDict):
      out.extend(all_fields(value, name + "."))
  return out


# A bare word on the command line (no quotes): a string, e.g. in a tuple field.
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.+-]*")


def _parse_bool(text: str, field: str) -> bool:
  low = text.strip().lower()
  if low in ("1", "true", "yes", "on"):
    return True
  if low in ("0", "false", "no", "off"):
    return False
  raise ConfigError(f"--config.{field} expects a boolean (true/false), got {text!r}.")


def _parse_value(text: Any, current: Any, field: str) -> Any:
  """``text`` (command-line text or an already typed value) as ``current``'s type."""
  if not isinstance(text, str):  # a Python value from the run API
    value = text
  elif isinstance(current, bool):
    return _parse_bool(text, field)
  elif isinstance(current, str):
    return text
  else:
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
      if current is None:
        return text
      if isinstance(current, (tuple, list)) and _WORD.fullmatch(text.strip()):
        return type(current)((text.strip(),))  # a bare word: a 1-tuple of it
      raise ConfigError(f"--config.{field}={text!r} is not a valid "
                        f"{type(current).__name__} literal.") from None
  if isinstance(current, bool):
    if isinstance(value, bool):
      return value
  elif isinstance(current, int) and isinstance(value, int) and not isinstance(value,
                                                                              bool):
    return value
  elif isinstance(current, float) and isinstance(value, (int, float)) \
      and not isinstance(value, bool):
    try:
      value = float(value)
    except OverflowError:  # an int beyond any float
      value = math.inf
    if not math.isfinite(value):  # 1e400 parses to inf
      raise ConfigError(f"--config.{field}={text!r} is not a finite number.")
    return value
  elif isinstance(current, (tuple, list)):
    if isinstance(value, (int, float, str)):
      value = (value,)
    if isinstance(value, (tuple, list)):
      return type(current)(value)
  elif isinstance(current, ml_collections.ConfigDict) and isinstance(value, dict):
    return ml_collections.ConfigDict(value)
  if current is None or type(value) is type(current):
    return value
  raise ConfigError(f"--config.{field} expects a {type(current).__name__}, got "
                    f"{text!r} ({type(value).__name__}).")


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Any) -> ml_collections.ConfigDict:
  """Set fields of ``config`` in place and return it.

  Args:
    config: the config to change.
    overrides: ``(field, value)`` pairs or a mapping ``{field: value}``; ``field``
      is dotted (``model.backbone``); ``value`` is command-line text
      (``"1e-3"``, ``"(16, 32)"``, ``"true"``) or a Python value of the field's
      type.

  An ``objective`` that changes the config's objective, without ``objective_kwargs``
  among the same overrides, starts from its own defaults: the config's
  ``objective_kwargs`` belong to the config's objective (the default's VICReg
  variance weight means nothing to SimCLR), so they are dropped, with a note on
  stderr naming them.

  Raises:
    ConfigError: unknown field (the message lists the closest names) or a value
      of the wrong type.
  """
  items = list(overrides.items() if hasattr(overrides, "items") else overrides)
  fields = all_fields(config)
  objective = config.get("objective")
  for field, text in items:
    parts = field.split(".")
    node = config
    for i, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        close = difflib.get_close_matches(field, fields, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown config field {field!r}.{hint} Valid fields: "
                          f"{', '.join(sorted(fields))}.")
      if i < len(parts) - 1:
        node = node[part]
    leaf = parts[-1]
    value = _parse_value(text, node[leaf], field)
    try:
      if isinstance(node[leaf], ml_collections.ConfigDict):
        node[leaf] = value
      else:
        setattr(node, leaf, value)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"cannot set --config.{field}={text!r}: {e}") from None
  _drop_foreign_objective_kwargs(config, objective, [field for field, _ in items])
  return config


def _drop_foreign_objective_kwargs(config: ml_collections.ConfigDict, objective: Any,
                                   fields: list[str]) -> None:
  """Empties ``objective_kwargs`` when the overrides changed only the objective."""
  kwargs = config.get("objective_kwargs")
  if (config.get("objective") == objective or not kwargs
      or any(f.split(".")[0] == "objective_kwargs" for f in fields)):
    return
  print(f"sslit: --config.objective={config.objective} starts from its own defaults: "
        f"the config's objective_kwargs {plain(kwargs)} (set for {objective!r}) are "
        f"dropped; --config.objective_kwargs sets the new objective's options.",
        file=sys.stderr)
  config.objective_kwargs = ml_collections.ConfigDict()


def to_dict(value: Any) -> Any:
  """A config (or part of one) as JSON-ready dicts and lists."""
  if isinstance(value, (ml_collections.ConfigDict, dict)):
    return {k: to_dict(v) for k, v in value.items()}
  if isinstance(value, (tuple, list)):
    return [to_dict(v) for v in value]
  return value


def plain(value: Any) -> Any:
  """ConfigDict -> dict, lists -> tuples (hashable, for Flax module attributes)."""
  if isinstance(value, (ml_collections.ConfigDict, dict)):
    return {k: plain(v) for k, v in value.items()}
  if isinstance(value, (tuple, list)):
    return tuple(plain(v) for v in value)
  return value


def with_defaults(stored: dict) -> ml_collections.ConfigDict:
  """A run's stored ``config.json`` with the groups it predates filled in.

  A run written before a field group existed (e.g. ``analysis``) gets that group
  from the default config, so every field a command reads has one default.
  """
  config = ml_collections.ConfigDict(stored)
  defaults = load_config(DEFAULT_CONFIG)
  for key in RESUMABLE_FIELDS:
    if key not in config and key in defaults:
      config[key] = defaults[key]
  return config



# Ranges of config fields, checked by :func:`check_values` before anything is written:
# ``(test, what the field must be)``. Fields checked where they are built
# (``sslit.train.FitOptions``: batch size, steps, schedule, crops) are not repeated.
_UNIT = (lambda v: 0 <= v < 1, "in [0, 1)")
_RANGES = {
    "grad_clip": (lambda v: v >= 0, ">= 0 (0: no clipping)"),
    "momentum": _UNIT,
    "ema_momentum": _UNIT,
    "average_weights": (lambda v: 0 <= v < 1, "in [0, 1) (0: no average)"),
    "seed": (lambda v: 0 <= v < 2**32, "in [0, 2**32)"),
    "cpu_devices": (lambda v: v >= 0, ">= 0 (0: leave the CPU as it is)"),
    "max_train_seconds": (lambda v: v >= 0, ">= 0 (0: no cap)"),
    "data_workers": (lambda v: v >= -1, ">= -1 (-1: the usable cores less one; 0: none)"),
    "monitor_every": (lambda v: v >= 0, ">= 0 (0: no monitor)"),
    "eval.l2": (lambda v: v >= 0, ">= 0"),
    "eval.steps": (lambda v: v >= 1, ">= 1"),
    "eval.batch_size": (lambda v: v >= 1, ">= 1"),
    "eval.max_train": (lambda v: v >= 0, ">= 0 (0: the whole training split)"),
    "eval.calibration_batches": (lambda v: v >= 1, ">= 1"),
    "eval.knn_k": (lambda v: all(isinstance(k, int) and k >= 1 for k in v),
                   "whole numbers >= 1"),
    "eval.baselines": (lambda v: set(v) <= {"raw", "random"},
                       "a tuple of 'raw' and 'random' (or empty)"),
    "analysis.num_examples": (lambda v: v >= 8, ">= 8"),
    "analysis.cpa_examples": (lambda v: v >= 1, ">= 1"),
    "analysis.sigma": (lambda v: v > 0, "> 0"),
    "analysis.relative_output_noise": (lambda v: v >= 0, ">= 0"),
}
# Ints are stored in 32 bits on the devices (steps, sizes, counts).
_INT_LIMIT = 2**31


def check_values(config: ml_collections.ConfigDict, *,
                 groups: tuple[str, ...] | None = None) -> None:
  """Check every value of a run config, each by its own field name.

  Every number finite (``1e400`` parses to inf: refused), whole numbers below
  2**31, the ranges of the optimiser's, the target's and the evaluation's fields
  (``grad_clip >= 0``, momenta in [0, 1), ``seed`` in [0, 2**32),
  ``monitor_examples >= 8`` when the monitor runs, ``eval.*``, ``analysis.*``), and
  in ``objective_kwargs`` every ``*temperature`` > 0 and ``*momentum`` in [0, 1).
  Called before anything is written (``sslit.runs.train``) and by the readers.

  Args:
    config: a run config.
    groups: check only these top-level fields and groups (e.g. ``("eval",
      "analysis")`` for a command that only evaluates); None: all.

  Raises:
    ConfigError: naming the first bad field, its value and what it must be.
  """
  def bad(field, value, want):
    raise ConfigError(f"--config.{field} must be {want}, got {value!r}.")

  def walk(node, prefix):
    for key, value in node.items():
      field = prefix + key
      if groups is not None and field.split(".")[0] not in groups:
        continue
      if isinstance(value, (ml_collections.ConfigDict, dict)):
        walk(value, field + ".")
        continue
      for v in (value if isinstance(value, (tuple, list)) else (value,)):
        if isinstance(v, float) and not math.isfinite(v):
          bad(field, value, "a finite number")
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= _INT_LIMIT \
            and field != "seed":
          bad(field, value, "a whole number of magnitude below 2**31")
      rule = _RANGES.get(field)
      leaf = key.lower()
      if rule is None and prefix == "objective_kwargs.":
        if leaf.endswith("temperature"):
          rule = (lambda v: v > 0, "> 0")
        elif leaf.endswith("momentum"):
          rule = _UNIT
      if rule is None or isinstance(value, bool):
        continue
      try:
        ok = rule[0](value)
      except TypeError:
        ok = False
      if not ok:
        bad(field, value, rule[1])

  walk(config, "")
  if (groups is None or "monitor_examples" in groups) and int(
      config.get("monitor_every", 0) or 0) and int(config.get("monitor_examples", 8)) < 8:
    bad("monitor_examples", config.monitor_examples,
        ">= 8 while monitor_every > 0 (or monitor_every=0: no monitor)")
