"""The README's promises: its example runs, and CI runs exactly its test command."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
  return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_readme_example_runs(capsys):
  (example,) = _blocks("python")
  exec(compile(example, "README.md", "exec"), {"__name__": "readme_example"})
  out = capsys.readouterr().out
  assert "vicreg" in out and "bound" in out


def test_ci_runs_the_readme_test_command():
  bash = _blocks("bash")
  test_cmd = next(b.strip() for b in bash if "pytest" in b)
  ci = (ROOT / ".ci" / "run").read_text().splitlines()
  assert test_cmd in [line.strip() for line in ci], (
      f".ci/run must call the README's test command verbatim: {test_cmd!r}")


def test_readme_main_job_command_names_the_data_package_and_sslit_train():
  main_cmd = next(b.strip() for b in _blocks("bash") if "sslit train" in b)
  assert "dataset-fashion-mnist" in main_cmd and main_cmd.endswith("sslit train")
