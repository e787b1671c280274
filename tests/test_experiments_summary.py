"""``python -m experiments summary``: the checked-in table cannot drift.

The table between the markers of experiments/README.md must equal what the summary
command prints for the checked-in results (experiments/results/); the command reads
full and compact results alike and marks missing or outdated ones.
"""

from __future__ import annotations

import json
import os

import pytest

from experiments import REGISTRY, summary
from experiments import __main__ as cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "experiments", "README.md")
TOP_README = os.path.join(REPO, "README.md")


def test_readme_table_equals_the_summary_of_the_checked_in_results(monkeypatch):
  monkeypatch.chdir(REPO)
  root = os.path.join("experiments", "results")
  for path, compact in ((README, False), (TOP_README, True)):
    with open(path) as f:
      text = f.read()
    assert summary.is_compact(text) == compact, path
    a, b = summary.marked_block(text, path)
    printed = summary.render(root, "cpu", compact=compact)
    assert text[a:b] == "\n" + printed, (
        f"{path}'s table is stale: run python -m experiments summary --root "
        f"experiments/results --scale cpu --readme README.md --readme "
        f"experiments/README.md")
  # Both name the same verdicts (the compact table drops only the result column).
  verdicts = lambda t: [line.split("|")[-3].strip().replace(summary.NOT_RUN, "–")
                        for line in t.splitlines() if line.startswith("| `")]
  assert verdicts(summary.render(root, "cpu")) == verdicts(
      summary.render(root, "cpu", compact=True))
  # Every checked-in copy is one the table reads (no stray or unreadable file).
  results_dir = os.path.join(REPO, "experiments", "results")
  for name in os.listdir(results_dir):
    if name.endswith(".json"):
      experiment, scale = name[:-len(".json")].rsplit("-", 1)
      assert experiment in REGISTRY and scale in ("smoke", "cpu", "full"), name
      with open(os.path.join(results_dir, name)) as f:
        assert "summary" in json.load(f), name


def _results(verdict, result):
  return {"experiment": "bound", "scale": "cpu", "verdict": verdict,
          "claim_held": {"held": True, "not held": False}.get(verdict),
          "criterion": "c", "runs": {"big": list(range(100))},
          "summary": {"claim": "the bound holds", "criterion": "c",
                      "verdict": verdict, "claim_held": None, "result": result,
                      "evidence": {}}}


def _write(path, results):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(results, f)


def test_rows_show_verdicts_and_mark_missing_or_outdated_results(tmp_path):
  _write(tmp_path / "bound-cpu" / "results.json", _results("undecided", "x | y"))
  _write(tmp_path / "table1-cpu" / "results.json", {"claim_held": True})  # old code
  table = summary.render(str(tmp_path), "cpu")
  rows = {line.split("|")[1].strip(): line for line in table.splitlines()
          if line.startswith("| `")}
  assert list(rows) == [f"`{n}` ({summary.SECTIONS[n]})" for n in REGISTRY]
  assert "**undecided**" in rows["`bound` (§7.4)"]
  assert "x \\| y" in rows["`bound` (§7.4)"]  # a pipe in a result is escaped
  for name in ("table1", "assumptions", "separation", "vicreg_logdet"):
    row = rows[f"`{name}` ({summary.SECTIONS[name]})"]
    assert summary.NOT_RUN in row and summary.CLAIMS[name] in row


def test_saved_copies_are_small_and_give_the_same_table(tmp_path):
  runs = tmp_path / "runs"
  _write(runs / "bound-cpu" / "results.json", _results("held", "7 checkpoints"))
  saved = tmp_path / "saved"
  assert summary.save(str(runs), "cpu", str(saved)) == [str(saved / "bound-cpu.json")]
  with open(saved / "bound-cpu.json") as f:
    small = json.load(f)
  assert "runs" not in small and small["verdict"] == "held"
  body = lambda t: t.split("\n", 1)[1]  # the first line names the root
  assert body(summary.render(str(saved), "cpu")) == body(summary.render(str(runs),
                                                                        "cpu"))


def test_command_prints_updates_and_checks_a_readme(tmp_path, capsys):
  _write(tmp_path / "runs" / "bound-cpu" / "results.json", _results("not held", "r"))
  readme = tmp_path / "README.md"
  readme.write_text(f"intro\n{summary.START}\nold\n{summary.END}\nend\n")
  root = str(tmp_path / "runs")
  assert cli.main(["summary", "--root", root, "--check", str(readme)]) == 1
  assert "differs" in capsys.readouterr().err
  assert cli.main(["summary", "--root", root, "--readme", str(readme)]) == 0
  printed = capsys.readouterr().out
  assert "**not held**" in printed
  assert readme.read_text() == f"intro\n{summary.START}\n{printed}{summary.END}\nend\n"
  assert cli.main(["summary", "--root", root, "--check", str(readme)]) == 0


def test_compact_block_and_several_files(tmp_path, capsys):
  _write(tmp_path / "runs" / "bound-cpu" / "results.json", _results("held", "r r"))
  root = str(tmp_path / "runs")
  full, top = tmp_path / "full.md", tmp_path / "top.md"
  full.write_text(f"{summary.START}\n{summary.END}\n")
  top.write_text(f"x\n{summary.START_COMPACT}\nold\n{summary.END}\n")
  assert cli.main(["summary", "--root", root, "--readme", str(full),
                   "--readme", str(top)]) == 0
  capsys.readouterr()
  compact = top.read_text()
  assert "r r" not in compact and "**held**" in compact  # no result column
  assert "[doc](docs/experiment_bound.md)" in compact     # linked from the root
  assert "r r" in full.read_text() and "(../docs/experiment_bound.md)" in full.read_text()
  assert summary.NOT_RUN in compact  # the experiments without results say so
  assert cli.main(["summary", "--root", root, "--check", str(full),
                   "--check", str(top)]) == 0
  top.write_text(compact.replace("**held**", "**not held**"))
  assert cli.main(["summary", "--root", root, "--check", str(full),
                   "--check", str(top)]) == 1


def test_bad_input_fails_clearly(tmp_path, capsys):
  (tmp_path / "bound-cpu").mkdir()
  (tmp_path / "bound-cpu" / "results.json").write_text("{not json")
  assert cli.main(["summary", "--root", str(tmp_path)]) == 2
  assert "not valid JSON" in capsys.readouterr().err
  readme = tmp_path / "R.md"
  readme.write_text("no markers")
  (tmp_path / "bound-cpu" / "results.json").write_text("{}")
  assert cli.main(["summary", "--root", str(tmp_path), "--check", str(readme)]) == 2
  assert "summary:start" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.main(["summary", "--scale", "huge"])
