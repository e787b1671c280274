"""Package-level rules: the dependency rule of the design, and the public surface."""

from __future__ import annotations

import ast
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SSLIT = ROOT / "sslit"

MATH_MODULES = ("objectives", "estimators", "cpa", "mixture", "bound", "_validate")
# What a math module may import: the standard library, jax, numpy, scipy and the
# other math modules. Nothing that trains, reads data or knows about Flax/Optax.
MATH_ALLOWED_THIRD_PARTY = {"jax", "numpy", "scipy"}
# ... and sslit.parallel (imports only jax and numpy): device placement and the CPU
# LAPACK work-around (per_matrix) go through it, the one module that knows devices.
MATH_ALLOWED_SSLIT = {"parallel"}
FRAMEWORKS = {"flax", "optax", "orbax", "tensorflow_datasets", "ml_collections",
              "tensorflow", "torch"}


def _imports(path: pathlib.Path) -> set[str]:
  """Top-level names of every module a file imports (absolute and relative)."""
  tree = ast.parse(path.read_text(), filename=str(path))
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # relative: from . import x / from .x import y
        base = node.module or ""
        names.update(f"sslit.{base or alias.name}".rstrip(".") for alias in node.names)
      elif node.module == "sslit":  # from sslit import estimators
        names.update(f"sslit.{alias.name}" for alias in node.names)
      elif node.module:
        names.add(node.module)
  return names


def _module_files():
  return sorted(p for p in SSLIT.rglob("*.py"))


@pytest.mark.parametrize("name", MATH_MODULES)
def test_math_modules_import_only_jax_numpy_scipy_and_each_other(name):
  path = SSLIT / f"{name}.py"
  paths = [path] if path.exists() else sorted((SSLIT / name).glob("*.py"))  # a package
  assert paths, f"{path.name} is missing"
  stdlib = set(sys.stdlib_module_names)
  for module in (m for p in paths for m in _imports(p)):
    top = module.split(".")[0]
    if top == "sslit":
      sub = module.split(".")[1] if "." in module else ""
      assert sub in MATH_MODULES or sub in MATH_ALLOWED_SSLIT, (
          f"{name}.py imports {module}: not a math module")
    else:
      assert top in stdlib or top in MATH_ALLOWED_THIRD_PARTY, (
          f"{name}.py imports {module}; math modules may only import jax, numpy, "
          f"scipy and each other")


def test_only_models_imports_flax():
  offenders = [p.name for p in _module_files()
               if p.stem != "models" and any(m.split(".")[0] == "flax"
                                             for m in _imports(p))]
  assert offenders == [], f"only sslit/models.py may import flax: {offenders}"


def test_library_never_imports_experiments():
  offenders = [p.name for p in _module_files()
               if any(m.split(".")[0] == "experiments" for m in _imports(p))]
  assert offenders == [], f"sslit must not import experiments/: {offenders}"


_DYNAMIC_IMPORTERS = {"import_module", "__import__", "run_module", "run_path",
                      "spec_from_file_location", "find_spec"}


def test_library_never_imports_experiments_dynamically():
  """No importlib/runpy call in sslit names the experiments package."""
  offenders = []
  for path in _module_files():
    for node in ast.walk(ast.parse(path.read_text())):
      if not isinstance(node, ast.Call):
        continue
      func = node.func
      name = getattr(func, "attr", None) or getattr(func, "id", None)
      if name not in _DYNAMIC_IMPORTERS:
        continue
      for arg in ast.walk(node):
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and \
            arg.value.split(".")[0] == "experiments":
          offenders.append(f"{path.name}:{node.lineno}")
  assert offenders == [], f"sslit imports experiments dynamically: {offenders}"


def test_the_run_layer_is_split_into_small_modules():
  """No sslit module grows into a god module (the design's limit: 800 lines)."""
  sizes = {p.name: len(p.read_text().splitlines()) for p in _module_files()}
  assert max(sizes.values()) < 800, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_no_private_jax_imports():
  offenders = [p.name for p in _module_files()
               if any(m.startswith("jax._src") for m in _imports(p))]
  assert offenders == [], f"sslit imports jax._src: {offenders}"


def test_experiments_use_no_private_sslit_name():
  """Experiments go through sslit's public API (sslit.runs and the math modules)."""
  offenders = []
  for path in sorted((ROOT / "experiments").rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Attribute) and node.attr.startswith("_") and \
          not node.attr.startswith("__") and isinstance(node.value, ast.Name) and \
          node.value.id in {"cli", "runs", "train", "evaluate", "features", "models",
                            "data", "monitor", "cpa", "estimators", "bound",
                            "objectives", "parallel", "config_lib", "metrics"}:
        offenders.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
  assert offenders == [], offenders


def test_math_modules_do_not_pull_frameworks_at_import():
  """Importing the math modules in a fresh interpreter loads no framework."""
  import subprocess
  present = list(MATH_MODULES)
  code = ("import sys\n"
          + "".join(f"import sslit.{m}\n" for m in present)
          + f"bad = sorted(m for m in {sorted(FRAMEWORKS)!r} if m in sys.modules)\n"
          + "print(','.join(bad))\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=ROOT, check=True)
  assert out.stdout.strip() == "", f"frameworks loaded: {out.stdout.strip()}"
