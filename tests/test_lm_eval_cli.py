"""run_eval.py --tasks lm_eval end to end, offline: a full-precision and a GPTQ checkpoint through lm-eval's own
tasks on the local data, into the same runs/results.json/CSV/report as our tasks, stored and resumed; tasks
without local data reported as unavailable, one line each."""

from __future__ import annotations

import csv
import json

import pytest
from test_eval_models import no_torch_compile, tiny_opt_gptq_dir  # noqa: F401 (fixtures: a 4-bit tiny OPT)

from evaluation import lm_eval_bridge, run_eval
from evaluation.store import run_path

pytestmark = pytest.mark.slow
pytest.importorskip("lm_eval")

MODELS = ("fp", "q")


@pytest.fixture(scope="module")
def data_args(crows_pairs_path, wikitext2_dir):
    return ["--crows-pairs", str(crows_pairs_path), "--wikitext2", str(wikitext2_dir)]


def _argv(out, tiny_opt_dir, gptq_dir, data_args):
    return ["--model", f"fp={tiny_opt_dir}", "--model", f"q={gptq_dir}", "--tasks", "crows_pairs,lm_eval",
            "--lm-eval-tasks", "crows_pairs_english,wikitext", "--max-items", "4", "--batch-size", "4",
            "--bootstrap", "50", "--no-progress", "--out", str(out), *data_args]


def test_fp_and_gptq_through_lm_eval_stored_reported_and_resumed(tiny_opt_dir, tiny_opt_gptq_dir, data_args,  # noqa: F811
                                                                  tmp_path, capsys, monkeypatch):
    out = tmp_path / "res"
    argv = _argv(out, tiny_opt_dir, tiny_opt_gptq_dir, data_args)
    assert run_eval.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    with (out / "results.csv").open(newline="") as handle:
        csv_rows = {(r["model"], r["task"], r["metric"]): r for r in csv.DictReader(handle)}
    report = (out / "report.md").read_text()

    for name, kind in zip(MODELS, ("fp", "gptq")):
        run = json.loads(run_path(out, name, "lm_eval").read_text())
        assert run["model_info"]["kind"] == kind
        assert run["data"]["tasks"] == ["crows_pairs_english", "wikitext"] and run["data"]["unavailable"] == {}
        assert run["settings"]["add_bos_token"] is False and run["settings"]["lm_eval_version"] == "0.4.13"
        lm_crows = run["metrics"]["results"]["crows_pairs_english"]
        assert run["metrics"]["n_samples"]["crows_pairs_english"]["effective"] == 4
        assert run["metrics"]["n_samples"]["wikitext"]["effective"] == 4
        # lm-eval's crows_pairs_english and our crows_pairs on the same 4 pairs, for FP and GPTQ alike
        ours = json.loads(run_path(out, name, "crows_pairs").read_text())
        assert lm_crows["pct_stereotype,none"] == ours["metrics"]["overall"]["pct_stereotype"]
        assert lm_crows["likelihood_diff,none"] == pytest.approx(ours["metrics"]["overall"]["likelihood_diff"],
                                                                abs=1e-4)
        assert ours["data"]["version"].startswith("original 1,508-pair release")
        assert run["data"]["sources"]["crows_pairs_english"]["version"] == ours["data"]["version"]

        flat = results["per_model"][name]["lm_eval"]["metrics"]
        assert flat["crows_pairs_english/pct_stereotype"] == lm_crows["pct_stereotype,none"]
        word_ppl = run["metrics"]["results"]["wikitext"]["word_perplexity,none"]
        assert flat["wikitext/word_perplexity"] == word_ppl > 1
        row = csv_rows[(name, "lm_eval", "wikitext/word_perplexity")]
        assert float(row["value"]) == pytest.approx(word_ppl)
        assert f"{word_ppl:.4f}" in report
    diff = results["comparisons"]["q"]["lm_eval"]["wikitext/word_perplexity"]["diff"]
    assert diff == pytest.approx(results["per_model"]["q"]["lm_eval"]["metrics"]["wikitext/word_perplexity"]
                                 - results["per_model"]["fp"]["lm_eval"]["metrics"]["wikitext/word_perplexity"])
    assert "data version: original 1,508-pair release" in report
    assert "lm-eval crows_pairs_english:" in report and "lm-eval wikitext:" in report
    assert "different protocol" in report  # lm-eval's word perplexity is not our token perplexity

    # a rerun reuses every stored run and loads no model
    stored = {(m, t): run_path(out, m, t).stat().st_mtime_ns for m in MODELS for t in ("crows_pairs", "lm_eval")}
    import evaluation.models

    monkeypatch.setattr(evaluation.models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    capsys.readouterr()
    assert run_eval.main(argv) == 0
    assert capsys.readouterr().out.count("stored result reused") == 4
    assert {key: run_path(out, *key).stat().st_mtime_ns for key in stored} == stored


def test_tasks_without_local_data_are_unavailable_one_line_each(tiny_opt_dir, data_args, tmp_path, capsys):
    out = tmp_path / "res"
    argv = ["--model", f"fp={tiny_opt_dir}", "--tasks", "lm_eval", "--out", str(out), "--no-progress",
            "--lm-eval-tasks", "crows_pairs_english,arc_easy,no_such_task", "--max-items", "2", *data_args]
    assert run_eval.main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "unavailable" in line]
    assert len(lines) == 2
    assert lines[0].startswith("fp lm_eval: arc_easy unavailable (") and "Hub" in lines[0]  # offline hub data
    assert lines[1].startswith("fp lm_eval: no_such_task unavailable (KeyError")
    run = json.loads(run_path(out, "fp", "lm_eval").read_text())
    assert run["data"]["tasks"] == ["crows_pairs_english"] and set(run["data"]["unavailable"]) == {"arc_easy",
                                                                                                  "no_such_task"}
    assert "lm-eval arc_easy: unavailable" in (out / "report.md").read_text()

    assert run_eval.main(argv) == 0  # stored and reused; the missing tasks are named again
    printed = capsys.readouterr().out
    assert "stored result reused" in printed and printed.count("when stored (--force retries)") == 2


def test_nothing_loadable_is_lines_not_a_crash(tiny_opt_dir, data_args, tmp_path, capsys, monkeypatch):
    # lm-eval's full index of built-in tasks takes ~10-40 s; an empty one gives the same "not registered" failure.
    from lm_eval.tasks import TaskManager

    monkeypatch.setattr(lm_eval_bridge, "build_task_manager",
                        lambda folder, requested, local: TaskManager(include_path=str(folder), include_defaults=False))
    argv = ["--model", f"fp={tiny_opt_dir}", "--tasks", "crows_pairs,lm_eval", "--lm-eval-tasks", "arc_easy,piqa",
            "--max-items", "2", "--out", str(tmp_path), "--no-progress", "--bootstrap", "20", *data_args]
    assert run_eval.main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("fp lm_eval:")]
    assert [line.split(" (")[0] for line in lines] == ["fp lm_eval: arc_easy unavailable",
                                                       "fp lm_eval: piqa unavailable",
                                                       "fp lm_eval: no lm-eval task could be loaded; the other tasks "
                                                       "still run"]
    assert run_path(tmp_path, "fp", "crows_pairs").is_file() and not run_path(tmp_path, "fp", "lm_eval").exists()
