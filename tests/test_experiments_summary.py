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
  verdicts = lambda t: [line.split("|")[-5].strip().replace(summary.NOT_RUN, "–")
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
  assert cli.main(["summary", "--docs", "none", "--root", root, "--check", str(readme)]) == 1
  assert "differs" in capsys.readouterr().err
  assert cli.main(["summary", "--docs", "none", "--root", root, "--readme", str(readme)]) == 0
  printed = capsys.readouterr().out
  assert "**not held**" in printed
  assert readme.read_text() == f"intro\n{summary.START}\n{printed}{summary.END}\nend\n"
  assert cli.main(["summary", "--docs", "none", "--root", root, "--check", str(readme)]) == 0


def test_compact_block_and_several_files(tmp_path, capsys):
  _write(tmp_path / "runs" / "bound-cpu" / "results.json", _results("held", "r r"))
  root = str(tmp_path / "runs")
  full, top = tmp_path / "full.md", tmp_path / "top.md"
  full.write_text(f"{summary.START}\n{summary.END}\n")
  top.write_text(f"x\n{summary.START_COMPACT}\nold\n{summary.END}\n")
  assert cli.main(["summary", "--docs", "none", "--root", root, "--readme", str(full),
                   "--readme", str(top)]) == 0
  capsys.readouterr()
  compact = top.read_text()
  assert "r r" not in compact and "**held**" in compact  # no result column
  assert "[doc](docs/experiment_bound.md)" in compact     # linked from the root
  assert "r r" in full.read_text() and "(../docs/experiment_bound.md)" in full.read_text()
  assert summary.NOT_RUN in compact  # the experiments without results say so
  assert cli.main(["summary", "--docs", "none", "--root", root, "--check", str(full),
                   "--check", str(top)]) == 0
  top.write_text(compact.replace("**held**", "**not held**"))
  assert cli.main(["summary", "--docs", "none", "--root", root, "--check", str(full),
                   "--check", str(top)]) == 1


def test_bad_input_fails_clearly(tmp_path, capsys):
  (tmp_path / "bound-cpu").mkdir()
  (tmp_path / "bound-cpu" / "results.json").write_text("{not json")
  assert cli.main(["summary", "--root", str(tmp_path)]) == 2
  assert "not valid JSON" in capsys.readouterr().err
  readme = tmp_path / "R.md"
  readme.write_text("no markers")
  (tmp_path / "bound-cpu" / "results.json").write_text("{}")
  assert cli.main(["summary", "--docs", "none", "--root", str(tmp_path), "--check", str(readme)]) == 2
  assert "summary:start" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.main(["summary", "--scale", "huge"])


# ---------------------------------------------------------------------------
# Verdicts recomputed from the checked-in evidence.

RESULTS = os.path.join(REPO, "experiments", "results")


def _copy_results(tmp_path):
  import shutil
  root = tmp_path / "results"
  shutil.copytree(RESULTS, root, ignore=shutil.ignore_patterns("pieces"))
  return root


def test_the_checked_in_verdicts_and_docs_are_what_the_evidence_gives(monkeypatch,
                                                                      capsys):
  """The repository's own command: tables, stored summaries and doc paragraphs."""
  monkeypatch.chdir(REPO)
  code = cli.main(["summary", "--root", os.path.join("experiments", "results"),
                   "--scale", "cpu", "--check", "README.md", "--check",
                   os.path.join("experiments", "README.md")])
  assert code == 0, capsys.readouterr().err


def _tamper_and_check(tmp_path, capsys, name, edit):
  root = _copy_results(tmp_path)
  path = root / f"{name}-cpu.json"
  with open(path) as f:
    results = json.load(f)
  assert summary.recompute(name, results) is not None, f"{name} has no evidence"
  assert summary.verify(name, results) == []
  edit(results["evidence"])
  with open(path, "w") as f:
    json.dump(results, f)
  code = cli.main(["summary", "--docs", "none", "--root", str(root), "--scale",
                   "cpu", "--check", os.path.join(REPO, "experiments", "README.md")])
  return code, capsys.readouterr().err, results


def test_tampered_table1_evidence_fails_the_check(tmp_path, capsys):
  """Differences edited to +5, +5, +5 with the stored verdict left alone."""
  def edit(ev):
    linear = ev["per_seed"]["linear"]
    for variant, base in (("vicreg+logdet", "vicreg"), ("vicreg+pairdist", "vicreg"),
                          ("byol+logdet", "byol"), ("byol+pairdist", "byol")):
      linear[variant] = [b + 5.0 for b in linear[base]]
  code, err, results = _tamper_and_check(tmp_path, capsys, "table1", edit)
  assert code == 1
  assert "table1: verdict is 'undecided', the evidence gives 'held'" in err
  assert summary.recompute("table1", results)["verdict"] == "held"


def test_tampered_assumptions_evidence_fails_the_check(tmp_path, capsys):
  """A trained network whose noisy copies mostly leave their region."""
  def edit(ev):
    row = next(r for r in ev["rows"] if r["method"] == "vicreg")
    row["stay_per_input"][0] = [0.5] * len(row["stay_per_input"][0])
  code, err, _ = _tamper_and_check(tmp_path, capsys, "assumptions", edit)
  assert code == 1 and "assumptions: verdict is 'held'" in err


def test_tampered_control_evidence_fails_the_check(tmp_path, capsys):
  """The controls are recomputed too: an A/A arm 5 points above its base."""
  def edit(ev):
    base = ev["per_seed"]["linear"][ev["aa"]["method"]]
    ev["aa"]["per_seed"]["linear"] = [b + 5.0 + 0.1 * i for i, b in enumerate(base)]
  code, err, results = _tamper_and_check(tmp_path, capsys, "table1", edit)
  assert code == 1 and "negative_controls" in err
  new = summary.recompute("table1", results)
  assert new["negative_controls"][0]["verdict"] == "held"


def test_every_checked_in_negative_control_is_not_held():
  for name in REGISTRY:
    with open(os.path.join(RESULTS, f"{name}-cpu.json")) as f:
      results = json.load(f)
    s = summary.recompute(name, results) or results["summary"]
    for c in s.get("negative_controls", []):
      assert c["verdict"] != "held", (name, c["name"])
      assert set(c) == {"name", "what", "verdict", "evidence"}


def test_doc_paragraphs_are_generated_and_checked(tmp_path, capsys):
  root = _copy_results(tmp_path)
  docs = tmp_path / "docs"
  docs.mkdir()
  doc = docs / "experiment_table1.md"
  doc.write_text(f"intro\n{summary.DOC_START}\nold words\n{summary.DOC_END}\nend\n")
  readme = tmp_path / "R.md"
  readme.write_text(f"{summary.START}\n{summary.END}\n")
  args = ["summary", "--root", str(root), "--docs", str(docs)]
  assert cli.main(args + ["--check", str(readme)]) == 1
  assert "verdict paragraph differs" in capsys.readouterr().err
  assert cli.main(args + ["--readme", str(readme)]) == 0
  text = doc.read_text()
  assert "old words" not in text and "**Verdict (cpu scale" in text
  assert "Negative control `aa_vicreg`" in text
  assert cli.main(args + ["--check", str(readme)]) == 0
  doc.write_text(text.replace("undecided.**", "held.**"))
  assert cli.main(args + ["--check", str(readme)]) == 1


def test_differences_name_the_path_and_tolerate_rounding():
  assert summary.differences({"a": [1.0, 2.0]}, {"a": [1.0, 2.0 + 1e-13]}) == []
  diff = summary.differences({"a": {"b": 1}}, {"a": {"b": 2}})
  assert diff == [".a.b: stored 1, recomputed 2"]
  assert summary.differences({"a": 1}, {}) == [".a: extra in the stored copy"]
