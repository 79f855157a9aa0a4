"""The experiment driver's --quick path on the tiny OPT: every variant quantized, evaluated, summarised."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("reproduce", ROOT / "sanity-check" / "reproduce.py")
reproduce = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reproduce)


def test_variant_table_quick_and_full():
    quick = reproduce.variant_table("all", 0.1, reproduce.QUICK_SWEEP, None, quick=True)
    assert list(quick) == ["fp", "gptq", "fair-all", "ctrl-unrelated", "ctrl-shuffled"]
    full = reproduce.variant_table("all", 0.1, reproduce.SWEEP, "pairs.json", quick=False)
    assert {"fair-lower", "fair-upper", "fair-lower-upper", "fair-all-a0.01", "fair-all-a0.3", "ctrl-file"} <= set(full)
    assert full["ctrl-shuffled"][-2:] == ["--pairs", "shuffled"] and full["gptq"] == ["--alpha", "0"]
    controls = reproduce.variant_table("controls", 0.1, reproduce.SWEEP, None, quick=False)
    assert list(controls) == ["fp", "gptq", "fair-all", "ctrl-unrelated", "ctrl-shuffled"]


@pytest.mark.slow
def test_quick_run_on_tiny_opt_writes_every_report(tiny_opt_dir, stereoset_dev_path, tmp_path, capsys):
    out = tmp_path / "quick"
    argv = ["--suite", "controls", "--quick", "--model", str(tiny_opt_dir), "--out", str(out), "--pairs", "4",
            "--group-size", "32", "--max-items", "12", "--max-windows", "2", "--seqlen", "64", "--device", "cpu",
            "--bootstrap", "50", "--stereoset", str(stereoset_dev_path)]
    assert reproduce.main(argv) == 0
    for name in ("gptq", "fair-all", "ctrl-unrelated", "ctrl-shuffled"):
        run = json.loads((out / "models" / name / "fair_gptq_run.json").read_text())
        assert run["calibration"]["n_pairs"] == 4 and run["calibration"]["split"]["part"] == "calib"
    assert json.loads((out / "models" / "ctrl-shuffled" / "fair_gptq_run.json").read_text())["calibration"]["mode"] == "shuffled"
    for report_file in ("results.json", "results.csv", "report.md"):
        assert (out / "eval" / report_file).is_file()
    assert list((out / "eval").glob("*.png"))
    assert json.loads((out / "eval-vs-gptq" / "results.json").read_text())["baseline"] == "gptq"
    summary = json.loads((out / "summary.json").read_text())
    results = json.loads((out / "eval" / "results.json").read_text())
    for name, row in summary["variants"].items():
        crows = results["per_model"][name]["crows_pairs"]["pct_stereotype"]
        assert row["crows_pct_stereotype"] == crows
        assert row["ppl"] == results["per_model"][name]["wikitext2"]["ppl"]
    table = (out / "summary.md").read_text()
    assert "| ctrl-unrelated | unrelated | 0.1 |" in table and "## Controls" in table

    capsys.readouterr()
    assert reproduce.main(argv) == 0  # a rerun reuses every model and evaluation
    rerun = capsys.readouterr().out
    assert rerun.count("reusing") == 4 and "stored result reused" in rerun


def test_study_variant_table():
    import study_jobs

    names = [v.name for v in study_jobs.study_variants()]
    assert names[:4] == ["fp", "gptq", "gptq-3bit", "gptq-g-1"] and len(names) == 20  # 19 quantizations + FP
    curves = [v for v in study_jobs.study_variants() if v.kind == "curve"]
    assert {(v.mode, v.alpha) for v in curves} == {(m, a) for m in study_jobs.DEFAULT_MODES for a in (0.1, 0.3, 1.0, 3.0)}
    eq = next(v for v in curves if v.name == "stereo-anti-eq-a0.3")
    assert eq.quantize_arguments()[eq.quantize_arguments().index("--pair-alignment") + 1] == "equal-length"
    assert next(v for v in study_jobs.study_variants() if v.name == "gptq-3bit").bits == 3


def test_study_flags_are_refused_outside_the_study(capsys):
    assert reproduce.main(["--suite", "controls", "--out", "x", "--only", "gptq"]) == 2
    assert reproduce.main(["--out", "x", "--only", "no-such-variant"]) == 2
    assert "not a study variant" in capsys.readouterr().err


def test_gemma_has_its_own_default_grid_and_the_command_line_wins(capsys):
    assert reproduce.main(["--model", "gemma3-270m", "--out", "r", "--list-jobs"]) == 0
    names = [line.split("--only ")[1] for line in capsys.readouterr().out.strip().splitlines()]
    # the committed Gemma study's grid: three references, three modes at alpha 0.3, 1, 3 (no stereo-anti-eq)
    assert names[:4] == ["fp", "gptq", "gptq-g-1", "gptq-3bit"] and len(names) == 4 + 9
    assert {n.rsplit("-a", 1)[1] for n in names[4:]} == {"0.3", "1", "3"}
    assert not any(n.startswith("stereo-anti-eq") for n in names)
    assert reproduce.main(["--model", "gemma3-270m", "--out", "r", "--list-jobs", "--alphas", "1",
                           "--references", ""]) == 0
    names = [line.split("--only ")[1] for line in capsys.readouterr().out.strip().splitlines()]
    assert names == ["fp", "stereo-anti-a1", "shuffled-a1", "unrelated-a1"]
    assert reproduce.main(["--out", "r", "--list-jobs"]) == 0  # SmolLM2 keeps the full grid
    assert len(capsys.readouterr().out.strip().splitlines()) == 4 + 16


def test_the_report_names_the_command_of_the_whole_study_not_of_one_job():
    import study_jobs

    argv = ["--out", "r", "--only", "gptq", "--alphas", "1,3", "--report", "--only=fp", "--list-jobs", "--quick"]
    assert study_jobs.study_arguments(argv) == ["--out", "r", "--alphas", "1,3", "--quick"]


@pytest.mark.slow
def test_study_quick_on_tiny_opt(tiny_opt_dir, stereoset_dev_path, tmp_path, capsys):
    out, models = tmp_path / "study", tmp_path / "models"
    argv = ["--quick", "--model", str(tiny_opt_dir), "--out", str(out), "--models-dir", str(models), "--pairs", "4",
            "--max-items", "12", "--max-windows", "2", "--seqlen", "64", "--device", "cpu", "--bootstrap", "50",
            "--mechanism-pairs", "6", "--stereoset", str(stereoset_dev_path),
            # a reduced grid that still has every kind of comparison: a control, the alignment variant, a 2-point
            # degradation curve
            "--modes", "stereo-anti,shuffled,stereo-anti-eq", "--references", "gptq,gptq-3bit"]
    assert reproduce.main(argv + ["--list-jobs"]) == 0
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 6 and all("--only" in c and "--list-jobs" not in c for c in commands)

    assert reproduce.main(argv + ["--only", "fp"]) == 0
    assert "reproduce.py " + " ".join(argv) + "`" in (out / "summary.md").read_text()  # not the --only command
    assert reproduce.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["name"]: r for r in summary["variants"]}
    assert set(rows) == {"fp", "gptq", "gptq-3bit", "stereo-anti-a1", "shuffled-a1", "stereo-anti-eq-a1"}
    assert summary["missing"] == []
    for name, row in rows.items():
        per = json.loads((out / "runs" / name / "crows_pairs.json").read_text())["per_item"]
        expected = 100 * sum(m > l for m, l in zip(per["ll_more"], per["ll_less"])) / len(per["ll_more"])
        assert row["crows_pct_stereotype"] == pytest.approx(expected) and row["crows_n"] == 12
        assert (row["mechanism_ratio"] is None) == (name == "fp")
    assert rows["shuffled-a1"]["n_pairs"] == 4 and rows["stereo-anti-a1"]["split_version"] == 2 and rows["stereo-anti-eq-a1"]["pair_alignment"] == "equal-length"
    assert {c["control"] for c in summary["comparisons"]} == {"shuffled-a1", "stereo-anti-eq-a1", "gptq"}
    assert {m["curve"] for m in summary["matched"]} == {"shuffled", "stereo-anti-eq", "degradation"}
    assert rows["gptq-3bit"]["bits"] == 3 and rows["gptq-3bit"]["ppl"] != rows["gptq"]["ppl"]
    machine = json.loads((out / "runs" / "gptq" / "job.json").read_text())["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch_threads"] >= 1 and machine["torch_cpu_capability"]
    for name in ("summary.md", "summary.csv", "mechanism_per_module.csv", "bias_vs_ppl_crows.png"):
        assert (out / name).is_file()

    # a fresh machine: the model folders are gone, the committed result files are there -> nothing is redone
    shutil.rmtree(models)
    capsys.readouterr()
    assert reproduce.main(argv) == 0
    rerun = capsys.readouterr().out
    assert rerun.count("skipped") == 6 and "quantizing" not in rerun and not models.exists()


def test_a_model_folder_quantized_with_other_settings_is_not_reused(tmp_path):
    """The study reuses a model folder only when the main job's recorded arguments are the ones it would pass."""
    import study_jobs

    sys_args = ["--model", "smollm2-135m", "--out", str(tmp_path), "--overwrite", "--no-generate", "--max-pairs",
                "256", "--batch-size", "2", "--seed", "0", "--device", "auto", "--log-delta-w", "--alpha", "1"]
    recorded = {"model": "smollm2-135m", "out": "elsewhere", "overwrite": True, "device": "auto", "dtype": "auto",
                "alpha": 1.0, "strategy": "all", "select_layer": "", "ignore_bias": None, "sum_hessians": 1,
                "log_delta_w": True, "log_hessian_sensitivity": False, "bits": 4, "group_size": 128,
                "desc_act": False, "batch_size": 2, "stereoset": None, "pairs": "stereo-anti", "pairs_file": None,
                "bias_types": None, "max_pairs": 256, "pair_alignment": "position", "split": "calib", "seed": 0,
                "prompt": "x", "max_new_tokens": 1, "no_generate": True, "push_to_hub": None, "verbose": False,
                "dry_run": False}
    (tmp_path / "fair_gptq_run.json").write_text(json.dumps({"arguments": recorded}))
    assert study_jobs.stale_model_arguments(tmp_path, sys_args) == []
    recorded["max_pairs"] = 16  # e.g. left over from a --quick run
    (tmp_path / "fair_gptq_run.json").write_text(json.dumps({"arguments": recorded}))
    assert study_jobs.stale_model_arguments(tmp_path, sys_args) == ["max_pairs: 16 -> 256"]

    mechanism_file = tmp_path / "mechanism.json"
    assert not study_jobs.mechanism_current(mechanism_file, "key", "print")
    mechanism_file.write_text(json.dumps({"job_key": "key", "model_fingerprint": "print"}))
    assert study_jobs.mechanism_current(mechanism_file, "key", "print")
    assert not study_jobs.mechanism_current(mechanism_file, "key", "other print")
    assert not study_jobs.mechanism_current(mechanism_file, "other key", "print")


def test_an_argument_added_later_counts_at_its_default(tmp_path):
    """A record made before an option existed lacks it: equal to the default, it is not a reason to re-quantize;
    asked for with another value, it is."""
    import study_jobs

    base = ["--model", "smollm2-135m", "--out", str(tmp_path), "--max-pairs", "256", "--alpha", "1"]
    parser = study_jobs._main_job_module().build_parser()
    recorded = vars(parser.parse_args(base))
    del recorded["sum_hessians"]  # as if this option had been added to the main job after the record was written
    (tmp_path / "fair_gptq_run.json").write_text(json.dumps({"arguments": recorded}))
    assert study_jobs.stale_model_arguments(tmp_path, base) == []
    recorded["bits"] = 3
    (tmp_path / "fair_gptq_run.json").write_text(json.dumps({"arguments": recorded}))
    assert study_jobs.stale_model_arguments(tmp_path, base) == ["bits: 3 -> 4"]


def test_checkpoint_sha256_covers_the_weights_only(tmp_path):
    import hashlib

    import study_jobs

    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "fair_gptq_run.json").write_text('{"seconds": 1}')
    expected = hashlib.sha256(b"model.safetensors\0" + b"weights").hexdigest()
    assert study_jobs.checkpoint_sha256(tmp_path) == expected
    (tmp_path / "fair_gptq_run.json").write_text('{"seconds": 2}')  # timings differ between identical runs
    assert study_jobs.checkpoint_sha256(tmp_path) == expected
    (tmp_path / "model.safetensors").write_bytes(b"weightz")
    assert study_jobs.checkpoint_sha256(tmp_path) != expected
    with pytest.raises(FileNotFoundError, match="safetensors"):
        study_jobs.checkpoint_sha256(tmp_path / "missing")


def test_checkpoint_record_reports_a_requantization_that_differs(tmp_path, capsys):
    import study_jobs

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"new weights")
    run_dir = tmp_path / "runs" / "gptq"
    run_dir.mkdir(parents=True)
    assert study_jobs.checkpoint_record(run_dir, model) == {"checkpoint_sha256": study_jobs.checkpoint_sha256(model)}
    (run_dir / "job.json").write_text(json.dumps({"checkpoint_sha256": "0" * 64}))
    record = study_jobs.checkpoint_record(run_dir, model)
    assert record["previous_checkpoint_sha256"] == "0" * 64
    assert "WARNING" in capsys.readouterr().out


def test_suite_subset_spec_names_every_suite_task_with_its_size():
    import suite_jobs
    from evaluation.subsets import parse_subset_spec

    assert parse_subset_spec(suite_jobs.subset_spec()) == suite_jobs.SUITE_SUBSETS
    assert suite_jobs.SUITE_SUBSETS["piqa"] == 1000 and suite_jobs.SUITE_SUBSETS["truthfulqa_mc2"] is None
    assert set(suite_jobs.ZEROSHOT_TASKS) < set(suite_jobs.SUITE_TASKS)


@pytest.mark.slow
def test_eraser_variants_on_tiny_opt(tiny_opt_dir, stereoset_dev_path, tmp_path, capsys):
    """inlp/leace variants: fitted on the calib pairs, applied at evaluation, compared with their controls on the
    same base and with the base itself; an earlier variant's job key does not move."""
    import study_jobs

    out, models = tmp_path / "study", tmp_path / "models"
    argv = ["--quick", "--model", str(tiny_opt_dir), "--out", str(out), "--models-dir", str(models), "--pairs", "12",
            "--max-items", "12", "--max-windows", "2", "--seqlen", "64", "--device", "cpu", "--bootstrap", "50",
            "--mechanism-pairs", "6", "--stereoset", str(stereoset_dev_path), "--modes", "stereo-anti",
            "--references", "gptq", "--erasers", "leace", "--eraser-bases", "fp"]
    for name in ("fp", "leace-fp", "leace-fp-unrelated"):
        assert reproduce.main(argv + ["--only", name]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["name"]: r for r in summary["variants"]}
    assert rows["leace-fp"]["kind"] == "eraser" and rows["leace-fp"]["base"] == "fp" and rows["leace-fp"]["bits"] is None
    assert rows["leace-fp"]["n_pairs"] == 12 and rows["leace-fp-unrelated"]["eraser_labels"] == "unrelated"
    assert rows["leace-fp"]["pairs_sha256"] != rows["leace-fp-unrelated"]["pairs_sha256"]
    settings = json.loads((out / "runs" / "leace-fp" / "crows_pairs.json").read_text())["settings"]
    assert settings["eraser"]["kind"] == "leace"  # the evaluation ran with the eraser applied
    assert rows["leace-fp"]["crows_pct_stereotype"] != rows["fp"]["crows_pct_stereotype"] or \
        rows["leace-fp"]["ppl"] != rows["fp"]["ppl"]
    pairs = {(c["method"], c["control"]) for c in summary["comparisons"] if c["mode"] == "leace"}
    assert pairs == {("leace-fp", "leace-fp-unrelated"), ("leace-fp", "fp")}
    assert "leace-fp" in (out / "summary.md").read_text()
    # the variants the study had before erasers keep their job keys
    gptq = study_jobs.Variant("gptq", "reference")
    assert "eraser" not in study_jobs.variant_record(gptq) and "base" not in study_jobs.variant_record(gptq)


def test_an_eraser_variant_has_no_checkpoint_or_pilot_stage_of_its_own(capsys, monkeypatch):
    import suite_jobs

    argv = ["--out", "x", "--erasers", "inlp", "--eraser-bases", "gptq", "--only", "inlp-gptq"]
    assert reproduce.main(argv + ["--stage", "checkpoint"]) == 2
    assert "run the stage for gptq" in capsys.readouterr().err
    assert reproduce.main(argv + ["--stage", "pilot"]) == 2
    # a whole grid's stage skips them with a note and goes on with the other variants
    checked = []
    monkeypatch.setattr(suite_jobs, "checkpoint_stage", lambda variant, *args: checked.append(variant.name))
    grid = ["--out", "x", "--modes", "stereo-anti", "--alphas", "1", "--references", "", "--erasers", "inlp",
            "--eraser-bases", "gptq", "--stage", "checkpoint"]
    assert reproduce.main(grid) == 0
    assert checked == ["fp", "stereo-anti-a1"]
    assert "[inlp-gptq] skipped" in capsys.readouterr().out


def test_eraser_check_needs_the_base_and_the_very_eraser_file_of_the_first_stage(tmp_path):
    import hashlib

    import study_jobs
    import suite_jobs

    variant = study_jobs.Variant("leace-fp", "eraser", mode="leace", eraser="leace")
    assert study_jobs.eraser_base(variant).name == "fp"
    assert study_jobs.eraser_base(study_jobs.Variant("leace-gptq", "eraser", eraser="leace", base="gptq")).name == "gptq"
    eraser = tmp_path / "leace-fp.pt"
    eraser.write_bytes(b"the eraser the first stage used")
    run = tmp_path / "out" / "runs" / "leace-fp"
    run.mkdir(parents=True)
    recorded = hashlib.sha256(b"the eraser the first stage used").hexdigest()
    (run / "crows_pairs.json").write_text(json.dumps({"settings": {"eraser": {"sha256": recorded}}}))
    base_ok = {"method": "WikiText-2 window 0 NLL", "recorded": 3.0, "now": 3.0, "match": True}
    from evaluation.data import sha256_file

    check = suite_jobs.eraser_check(variant, sha256_file(eraser), base_ok, tmp_path / "out")
    assert check["match"] and check["now"] == [3.0, recorded]
    assert not suite_jobs.eraser_check(variant, sha256_file(eraser), {**base_ok, "now": 3.5, "match": False},
                                       tmp_path / "out")["match"]
    eraser.write_bytes(b"a refit that came out different")
    assert not suite_jobs.eraser_check(variant, sha256_file(eraser), base_ok, tmp_path / "out")["match"]
    # a refit (other file, other sha256) passes only by reproducing the committed window-0 NLL with it applied
    (run / "wikitext2.json").write_text(json.dumps({"per_item": {"window_nll": [5000.0, 4000.0]},
                                                    "settings": {"seqlen": 64}}))
    asked = []

    def window0(nll):
        return lambda seqlen: asked.append(seqlen) or nll
    refit = suite_jobs.eraser_check(variant, sha256_file(eraser), base_ok, tmp_path / "out", window0(5000.0 + 0.04))
    assert refit["match"] and refit["recorded"] == 5000.0 and asked == [64]  # the committed window length
    assert refit["eraser_sha256"] == {"recorded": recorded, "now": sha256_file(eraser)}
    assert not suite_jobs.eraser_check(variant, sha256_file(eraser), base_ok, tmp_path / "out",
                                       window0(5000.0 + 0.06))["match"]  # beyond the 1e-5 relative tolerance
    # the window scores base and refit together: it decides, whatever the base's own check said
    assert suite_jobs.eraser_check(variant, sha256_file(eraser), {**base_ok, "match": False}, tmp_path / "out",
                                   window0(5000.0))["match"]


def test_a_gptq_eraser_is_checked_against_the_base_its_own_job_recorded(tmp_path):
    """The gptq base may have been quantized again before the eraser's job: that job's recorded base, not the
    model of runs/gptq/, is what the suite must reproduce."""
    import study_jobs
    import suite_jobs

    variant = study_jobs.Variant("inlp-gptq", "eraser", mode="inlp", eraser="inlp", base="gptq")
    run = tmp_path / "runs" / "inlp-gptq"
    run.mkdir(parents=True)
    (run / "crows_pairs.json").write_text(json.dumps({"settings": {"eraser": {"sha256": "e1"}}}))
    (run / "job.json").write_text(json.dumps({"base_checkpoint_sha256": "b2"}))
    not_runs_gptq = {"method": "weights sha256", "recorded": "b1", "now": "b2", "match": False}
    check = suite_jobs.eraser_check(variant, "e1", not_runs_gptq, tmp_path, base_sha256="b2")
    assert check["match"] and check["recorded"] == ["b2", "e1"] and check["now"] == ["b2", "e1"]
    assert not suite_jobs.eraser_check(variant, "e1", {**not_runs_gptq, "match": True}, tmp_path,
                                       base_sha256="b3")["match"]  # another base than the job's
    (run / "job.json").write_text(json.dumps({}))  # an older job without the record: the base's own check
    assert not suite_jobs.eraser_check(variant, "e1", not_runs_gptq, tmp_path, base_sha256="b2")["match"]


def test_window0_nll_applies_the_given_eraser(tiny_mistral_dir, tmp_path):
    """The refit check scores the base *with* the eraser: an identity eraser leaves the window's NLL as it is,
    one that removes directions changes it."""
    from types import SimpleNamespace

    import suite_jobs
    import torch

    from fair_gptq.erasure.artifact import Eraser, save_eraser

    args = SimpleNamespace(device="cpu", seed=0, seqlen=32)
    basis, _ = torch.linalg.qr(torch.randn(128, 8, generator=torch.Generator().manual_seed(0)))
    save_eraser(Eraser("inlp", torch.eye(128, dtype=torch.float64)), tmp_path / "identity.pt")
    save_eraser(Eraser("inlp", (torch.eye(128) - basis @ basis.T).double()), tmp_path / "remove8.pt")
    plain = suite_jobs.window0_nll(str(tiny_mistral_dir), "m", args)
    assert suite_jobs.window0_nll(str(tiny_mistral_dir), "m", args, eraser=tmp_path / "identity.pt") == \
        pytest.approx(plain, rel=1e-6)
    # far beyond what the check tolerates (the tiny random model's logits are nearly flat, so not by much more)
    assert abs(suite_jobs.window0_nll(str(tiny_mistral_dir), "m", args, eraser=tmp_path / "remove8.pt") - plain) > \
        20 * suite_jobs.WINDOW_NLL_RTOL * abs(plain)
