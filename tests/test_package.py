"""Package-level rules: the dependency rule of the design, cohesion (no import cycle, no
private name across modules, every module in the design's table), the public surface."""

from __future__ import annotations

import ast
import pathlib
import re
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


# ------------------------------------------------------------------ cohesion
# A module may be long if it holds one job; these rules measure whether the rooms are
# cut by job: no import cycle, no private name used outside its module, and every
# module named with its job in docs/design.md's module table.


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
  """sslit module -> the sslit modules it imports (at any level of the file)."""
  modules = {_module_name(p): p for p in _module_files()}

  def owner(name: str) -> str:  # a module, or the module that defines the name
    while name and name not in modules:
      name = name.rpartition(".")[0]
    return name

  graph = {}
  for name, path in modules.items():
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        deps.update(owner(a.name) for a in node.names if a.name.split(".")[0] == "sslit")
      elif isinstance(node, ast.ImportFrom) and not node.level and node.module and \
          node.module.split(".")[0] == "sslit":
        deps.update(owner(f"{node.module}.{a.name}") for a in node.names)
    graph[name] = deps - {name, ""}
  return graph


def test_no_import_cycle_inside_sslit():
  graph = _import_graph()
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  path: list[str] = []

  def visit(m):
    state[m], _ = 1, path.append(m)
    for d in sorted(graph.get(m, ())):
      if state.get(d) == 1:
        raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
      if d not in state:
        visit(d)
    state[m], _ = 2, path.pop()

  for m in sorted(graph):
    if m not in state:
      visit(m)


# (importing file, private name it uses) -> why. Keep this list short.
PRIVATE_NAME_EXCEPTIONS = {
    # sslit/__init__.py sets the XLA flag before JAX starts, so it cannot import
    # parallel (which imports jax); parallel reads that state from the package.
    ("sslit/parallel.py", "sslit._FLAG_NAME"): "set before JAX starts",
    ("sslit/parallel.py", "sslit._jaxlib_affected"): "set before JAX starts",
    ("sslit/parallel.py", "sslit._backend_started"): "set before JAX starts",
    ("tests/test_robustness.py", "sslit._jaxlib_affected"): "set before JAX starts",
    ("tests/test_robustness.py", "sslit._serialize_cpu_lapack_on_import"):
        "set before JAX starts",
    # Internal samplers and helpers with no public entry, tested against oracles.
    ("tests/test_augment.py", "sslit.augment._CROP_TRIES"): "crop-box oracle",
    ("tests/test_augment.py", "sslit.augment._crop_box_from_uniforms"): "crop-box oracle",
    ("tests/test_augment.py", "sslit.augment._sample_one"): "sampler oracle",
    ("tests/test_models.py", "sslit.models._flatten_sown"): "sown-activation layout",
    ("tests/test_train.py", "sslit.train._make_augment_fn"): "train = monitor views",
    ("tests/test_train.py", "sslit.monitor._views_fn"): "train = monitor views",
}


def _private_uses(path: pathlib.Path) -> set[str]:
  """``sslit.x._name`` for each private name of another module that ``path`` uses,
  by ``from sslit.x import _name`` or as an attribute of an imported sslit module.
  ``sslit._validate``, the package's shared input checks, is a module, not a name."""
  tree = ast.parse(path.read_text())
  aliases, uses = {}, set()
  private = lambda n: n.startswith("_") and not n.startswith("__") and n != "_validate"
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name.split(".")[0] == "sslit":
          aliases[a.asname or "sslit"] = a.name if a.asname else "sslit"
    elif isinstance(node, ast.ImportFrom) and not node.level and node.module and \
        node.module.split(".")[0] == "sslit":
      for a in node.names:
        if private(a.name):
          uses.add(f"{node.module}.{a.name}")
        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
        node.value.id in aliases and private(node.attr):
      uses.add(f"{aliases[node.value.id]}.{node.attr}")
  return uses


def test_no_private_name_crosses_a_module():
  files = _module_files() + sorted((ROOT / "tests").rglob("*.py")) + sorted(
      (ROOT / "bench").glob("*.py"))
  found = {(str(p.relative_to(ROOT)), u) for p in files for u in _private_uses(p)}
  unexpected = sorted(found - set(PRIVATE_NAME_EXCEPTIONS))
  assert unexpected == [], ("a private name used outside its module (make it public "
                            f"where it belongs, or justify it here): {unexpected}")
  stale = sorted(set(PRIVATE_NAME_EXCEPTIONS) - found)
  assert stale == [], f"exceptions no longer needed, remove them: {stale}"


def _design_table() -> dict[str, str]:
  """First-column names of docs/design.md's module table -> their row."""
  rows = {}
  for line in (ROOT / "docs" / "design.md").read_text().splitlines():
    if line.startswith("| `"):
      first = line.split("|")[1]
      for name in re.findall(r"`([^`]+)`", first):
        rows[name] = line
  return rows


def test_every_module_has_its_row_in_the_design_table():
  """Each top-level module (``x.py``) and package (``x/``) of sslit has a row saying
  its job, each module of a package is named in its package's row, and every row
  names something that exists. ``configs/`` holds config files, not modules."""
  rows = _design_table()
  missing = []
  for path in sorted(SSLIT.iterdir()):
    if path.name.startswith("__") or path.name.endswith(".egg-info"):
      continue
    if path.suffix == ".py" and path.name not in rows:
      missing.append(path.name)
    elif path.is_dir() and (path / "__init__.py").exists():
      row = rows.get(f"{path.name}/")
      if row is None:
        missing.append(f"{path.name}/")
      elif path.name != "configs":
        missing += [f"{path.name}/{p.name}" for p in sorted(path.glob("*.py"))
                    if p.stem != "__init__" and f"`{p.stem}`" not in row]
  assert missing == [], f"modules without their row in docs/design.md: {missing}"
  gone = [n for n in rows if not (SSLIT / n).exists()]
  assert gone == [], f"docs/design.md's module table names missing modules: {gone}"


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
