"""evaluation/run_eval.py end to end on the tiny models: files, resume, --force, errors, report, lm-eval."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import pytest
import torch

from evaluation import lm_eval_bridge, run_eval
from evaluation.store import load_runs, run_path

TASKS = ("crows_pairs", "stereoset", "wikitext2")


@pytest.fixture(scope="module")
def data_args(crows_pairs_path, stereoset_dev_path, wikitext2_dir, tmp_path_factory):
    # The first 300 WikiText-2 test rows: tokenizing all 1.3 MB with the tiny byte-level tokenizer
    # takes seconds per model, and a quick run scores 2 windows anyway.
    rows = (wikitext2_dir / "wikitext-2-raw-v1_test_rows.jsonl").read_text(encoding="utf-8").splitlines()[:300]
    small = tmp_path_factory.mktemp("wikitext") / "rows.jsonl"
    small.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return ["--crows-pairs", str(crows_pairs_path), "--stereoset", str(stereoset_dev_path), "--wikitext2", str(small)]


def _argv(out, tiny_opt_dir, tiny_mistral_dir, data_args, *extra):
    return [
        "--model", f"fp={tiny_opt_dir}", "--model", f"other={tiny_mistral_dir}",
        "--tasks", ",".join(TASKS), "--out", str(out), "--max-items", "6", "--max-windows", "2",
        "--seqlen", "64", "--bootstrap", "200", "--batch-size", "4", "--no-progress", *data_args, *extra,
    ]


def _mtimes(out):
    return {(m, t): run_path(out, m, t).stat().st_mtime_ns for m in ("fp", "other") for t in TASKS}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_opt_dir, tiny_mistral_dir, data_args):
    """One full run shared by the tests below (they copy it before changing anything)."""
    out = tmp_path_factory.mktemp("eval") / "res"
    assert run_eval.main(_argv(out, tiny_opt_dir, tiny_mistral_dir, data_args)) == 0
    return out


def test_run_writes_runs_and_report(finished_run):
    out = finished_run
    for model in ("fp", "other"):
        for task in TASKS:
            run = json.loads(run_path(out, model, task).read_text())
            assert run["model"] == model and run["task"] == task and run["settings"]["task"] == task
    crows = json.loads(run_path(out, "fp", "crows_pairs").read_text())
    assert len(crows["per_item"]["ll_more"]) == 6  # per-sentence scores are stored
    stereo = json.loads(run_path(out, "fp", "stereoset").read_text())
    assert stereo["data"]["part"] == "eval" and stereo["data"]["n_items_evaluated"] == 6
    assert stereo["settings"]["split"] == "eval"
    wiki = json.loads(run_path(out, "fp", "wikitext2").read_text())
    assert wiki["metrics"]["n_windows"] == 2 and wiki["metrics"]["seqlen"] == 64

    results = json.loads((out / "results.json").read_text())
    assert results["models"] == ["fp", "other"] and results["baseline"] == "fp"
    fp = results["per_model"]["fp"]
    assert fp["crows_pairs"]["pct_stereotype"] == crows["metrics"]["overall"]["pct_stereotype"]
    assert fp["stereoset"]["domains"]["overall"]["ss"] == stereo["metrics"]["domains"]["overall"]["ss"]
    assert fp["wikitext2"]["ppl"] == wiki["metrics"]["ppl"]
    lo, hi = fp["crows_pairs"]["pct_stereotype_ci"]
    assert lo <= fp["crows_pairs"]["pct_stereotype"] <= hi
    comp = results["comparisons"]["other"]
    assert comp["crows_pairs"]["n_common"] == 6 and comp["stereoset"]["n_common"] == 6
    other_pct = results["per_model"]["other"]["crows_pairs"]["pct_stereotype"]
    fp_pct = fp["crows_pairs"]["pct_stereotype"]
    assert comp["crows_pairs"]["pct_stereotype"]["diff"] == pytest.approx(other_pct - fp_pct)

    with (out / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_key = {(r["model"], r["task"], r["metric"], r["group"]): r for r in rows}
    row = by_key[("fp", "crows_pairs", "pct_stereotype", "overall")]
    assert float(row["value"]) == pytest.approx(fp["crows_pairs"]["pct_stereotype"])
    assert float(row["ci_low"]) == pytest.approx(lo)
    row = by_key[("other", "stereoset", "ss", "overall")]
    assert float(row["value"]) == pytest.approx(results["per_model"]["other"]["stereoset"]["domains"]["overall"]["ss"])
    assert float(row["diff_vs_baseline"]) == pytest.approx(comp["stereoset"]["ss"]["diff"])
    assert float(by_key[("other", "wikitext2", "ppl_gptq", "overall")]["value"]) == pytest.approx(
        results["per_model"]["other"]["wikitext2"]["ppl"])

    report = (out / "report.md").read_text()
    assert "split **eval**" in report and "6 items evaluated of 1052" in report
    assert f"{100 * fp['crows_pairs']['pct_stereotype']:.1f}" in report
    assert f"{fp['wikitext2']['ppl']:.3f}" in report
    for png in ("crows_pairs_by_bias_type.png", "stereoset_ss_vs_lms.png", "perplexity.png"):
        assert (out / png).stat().st_size > 1000
        assert png in report


def test_rerun_skips_finished_and_force_recomputes(finished_run, tiny_opt_dir, tiny_mistral_dir, data_args,
                                                   tmp_path, capsys, monkeypatch):
    out = tmp_path / "res"
    shutil.copytree(finished_run, out)  # copy2: the stored files keep their mtimes
    before = _mtimes(out)
    loads = []
    import evaluation.models

    real_load = evaluation.models.load_model
    monkeypatch.setattr(evaluation.models, "load_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))

    assert run_eval.main(_argv(out, tiny_opt_dir, tiny_mistral_dir, data_args)) == 0
    assert _mtimes(out) == before and loads == []  # nothing recomputed, no model loaded
    assert capsys.readouterr().out.count("stored result reused") == 6

    # a changed setting recomputes only what it affects
    argv = _argv(out, tiny_opt_dir, tiny_mistral_dir, data_args)
    argv[argv.index("--max-windows") + 1] = "1"
    assert run_eval.main(argv) == 0
    after = _mtimes(out)
    for key in before:
        assert (after[key] != before[key]) == (key[1] == "wikitext2")
    assert json.loads(run_path(out, "fp", "wikitext2").read_text())["metrics"]["n_windows"] == 1

    assert run_eval.main(argv + ["--force"]) == 0
    forced = _mtimes(out)
    assert all(forced[key] != after[key] for key in forced)


def test_load_runs_and_write_report_for_other_drivers(finished_run, tmp_path):
    from evaluation.report import write_report

    loaded = load_runs(finished_run)
    assert loaded["models"] == ["fp", "other"] and set(loaded["runs"]["fp"]) == set(TASKS)
    results = write_report(finished_run, tmp_path / "again", n_bootstrap=200)
    assert (tmp_path / "again" / "report.md").is_file()
    assert results == json.loads((finished_run / "results.json").read_text())  # seeded: reproducible


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "fp=MODEL", "--tasks", "crows_pairs,bogus"], "unknown task 'bogus'"),
        (["--model", "fpMODEL"], "expected NAME=PATH"),
        (["--model", "a=MODEL", "--model", "a=MODEL"], "duplicate model name 'a'"),
        (["--model", "bad/name=MODEL"], "bad model name"),
        (["--model", "fp=/no/such/model"], "does not exist"),
        (["--model", "fp=MODEL", "--crows-pairs", "/no/such.csv"], "CrowS-Pairs file not found"),
        (["--model", "fp=MODEL", "--tasks", "stereoset", "--stereoset", "/no/such.json"], "StereoSet"),
        (["--model", "fp=MODEL", "--tasks", "wikitext2", "--wikitext2", "/no/such.txt"], "WikiText-2 file not found"),
        (["--model", "fp=MODEL", "--batch-size", "0"], "--batch-size must be >= 1"),
        ([], "at least one --model"),
        pytest.param(["--model", "fp=MODEL", "--device", "cuda"], "no CUDA device",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")),
    ],
)
def test_bad_inputs_fail_before_loading_a_model(argv, message, tiny_opt_dir, tmp_path, capsys, monkeypatch):
    import evaluation.models

    def refuse(*_args, **_kwargs):
        raise AssertionError("a model was loaded despite bad input")

    monkeypatch.setattr(evaluation.models, "load_model", refuse)
    argv = [a.replace("MODEL", str(tiny_opt_dir)) for a in argv] + ["--out", str(tmp_path / "o")]
    assert run_eval.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("run_eval.py: error:")


def test_unloadable_checkpoint_is_one_line(tiny_opt_dir, crows_pairs_path, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tiny_opt_dir / name, broken / name)  # no weights
    argv = ["--model", f"fp={tiny_opt_dir}", "--model", f"broken={broken}", "--tasks", "crows_pairs",
            "--crows-pairs", str(crows_pairs_path), "--max-items", "2", "--out", str(tmp_path / "o"), "--no-progress"]
    assert run_eval.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not load model broken" in err[0]
    assert run_path(tmp_path / "o", "fp", "crows_pairs").is_file()  # the first model's result stays


def test_paper_protocol_refuses_joined_text(tiny_opt_dir, wikitext2_dir, tmp_path, capsys):
    argv = ["--model", f"fp={tiny_opt_dir}", "--tasks", "wikitext2", "--protocol", "paper",
            "--wikitext2", str(wikitext2_dir / "wikitext2_test_joined.txt"), "--out", str(tmp_path)]
    assert run_eval.main(argv) == 2
    assert "needs the WikiText-2 rows" in capsys.readouterr().err


def test_lm_eval_missing_prints_one_line_and_other_tasks_run(tiny_opt_dir, crows_pairs_path, tmp_path, capsys,
                                                              monkeypatch):
    monkeypatch.setattr(lm_eval_bridge, "_lm_eval_installed", lambda: False)
    argv = ["--model", f"fp={tiny_opt_dir}", "--tasks", "crows_pairs,lm_eval", "--crows-pairs", str(crows_pairs_path),
            "--max-items", "3", "--out", str(tmp_path), "--no-progress", "--bootstrap", "50"]
    assert run_eval.main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "lm-eval" in line]
    assert len(lines) == 1 and "lm-eval is not installed" in lines[0]
    assert run_path(tmp_path, "fp", "crows_pairs").is_file()
    assert not run_path(tmp_path, "fp", "lm_eval").exists()


def test_script_runs_from_the_repo_root():
    from fair_gptq.paths import repo_root

    done = subprocess.run([sys.executable, "evaluation/run_eval.py", "--help"], cwd=repo_root(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--stereoset-split" in done.stdout
