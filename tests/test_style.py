"""The whole tree passes ruff's linter (``[tool.ruff]`` in pyproject.toml).

Run by the README's test command, so CI checks it: ``ruff check .`` from the
repository root (undefined and unused names, redefinitions, pycodestyle errors).
ruff is pinned in the ``test`` extra. The formatter's settings are in the same
table; ``ruff format .`` has not been applied to the tree yet, so only the linter
is enforced here.
"""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ruff(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=REPO,
                        capture_output=True, text=True, check=False, timeout=300)


def test_the_tree_passes_the_linter():
  done = _ruff("check", ".")
  assert done.returncode == 0, (
      f"fix what `ruff check .` reports:\n{done.stdout}{done.stderr}")
