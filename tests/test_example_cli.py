"""example_fair_gptq.py end to end on the tiny OPT, and every input error before any weight is loaded."""
import json
from pathlib import Path

import pytest

import example_fair_gptq as cli


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def base_args(tiny_opt_dir, stereoset_dev_path):
    return ["--model", tiny_opt_dir, "--stereoset", stereoset_dev_path, "--group-size", 32, "--device", "cpu"]


def test_fair_accumulate_flag_reaches_the_config_and_the_record(capsys, base_args):
    code, stdout, _ = run_cli(capsys, *base_args, "--fair-accumulate", "sum-difference", "--max-pairs", 4,
                              "--dry-run")
    assert code == 0 and "fair_accumulate=sum-difference" in stdout
    for flag, expected in ((["--fair-accumulate", "sum-difference"], "sum-difference"), ([], "direct")):
        args = cli.build_parser().parse_args([str(a) for a in [*base_args, *flag, "--max-pairs", 4, "--dry-run"]])
        plan = cli.plan_run(args)
        assert cli.make_quantize_config(args, plan, "cpu").fair_accumulate == expected
        assert cli.run_record(plan, "cpu", {}, {})["arguments"]["fair_accumulate"] == expected


@pytest.mark.slow
def test_end_to_end_tiny_opt(capsys, tmp_path, base_args, monkeypatch):
    out = tmp_path / "tiny-fair"
    elsewhere = tmp_path / "user-stands-here"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, stdout, _ = run_cli(capsys, *base_args, "--max-pairs", 6, "--batch-size", 4, "--select-layer", "1,2",
                              "--log-delta-w", "--max-new-tokens", 4, "--out", out)
    assert code == 0
    assert f"Quantized model written to {out.resolve()}" in stdout
    assert "Generation from the reloaded model" in stdout
    assert (out / "quantize_config.json").is_file() and list(out.glob("*.safetensors"))
    run = json.loads((out / cli.RUN_FILE).read_text())
    assert run["calibration"]["n_pairs"] == 6 and run["calibration"]["split"]["part"] == "calib"
    assert run["calibration"]["split"]["split_version"] == 2
    assert len(run["calibration"]["sha256"]) == 64
    active = {m["module"] for m in run["modules"] if m["fair_term"]}
    assert active == {f"model.decoder.layers.{i}.{n}" for i in (1, 2) for n in ("self_attn.out_proj", "fc2")}
    assert all("relative_delta_w" in m for m in run["modules"] if m["fair_term"])
    assert len(run["modules"]) == 24  # 4 layers x 6 modules, listed in full whatever the printout
    assert run["versions"]["gptqmodel"] == "2.2.0" and run["timings"]["quantize_s"] > 0
    assert run["generation"]["text"].startswith(cli.build_parser().get_default("prompt")[:3])
    saved = json.loads((out / "quantize_config.json").read_text())
    assert saved["alpha"] == 0.1 and saved["select_layer"] == "1,2"
    # logs: beside --out in the run's own folder, none where the user stood, and the working directory restored
    logs = tmp_path / "tiny-fair.logs" / run["run_id"]
    assert run["log_dir"] == str(logs) and saved["log_dir"] == f"../tiny-fair.logs/{run['run_id']}"
    assert saved["log_run_id"] == run["run_id"]
    assert list(logs.glob("gptq_log_*.log")) and not list(elsewhere.iterdir()) and Path.cwd() == elsewhere
    records = [json.loads(line) for line in (logs / "delta_w.jsonl").read_text().splitlines()]
    assert {r["module"] for r in records} == active and {r["run_id"] for r in records} == {run["run_id"]}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_dry_run_prints_the_plan_without_writing(capsys, tmp_path, base_args):
    code, stdout, _ = run_cli(capsys, *base_args, "--strategy", "upper", "--max-pairs", 10, "--dry-run")
    assert code == 0
    assert "calibration: 10 pairs" in stdout and "layers=2-3" in stdout  # L=4 -> k=2, the last two
    assert "fair term on 4 of 24 quantized modules" in stdout
    # compact: one line per module name (OPT's default ignore_bias leaves out_proj and fc2), no per-module lines
    assert "\n  self_attn.out_proj  layers 2-3 (2)\n  fc2                 layers 2-3 (2)\n" in stdout
    assert "+ model.decoder" not in stdout
    assert not list(tmp_path.iterdir())


def test_verbose_dry_run_lists_every_module(capsys, base_args):
    code, stdout, _ = run_cli(capsys, *base_args, "--select-layer", "0,3", "--max-pairs", 2, "--dry-run", "--verbose")
    assert code == 0
    listed = [line.strip() for line in stdout.splitlines() if line.startswith("  + ")]
    assert listed == ["+ model.decoder.layers.0.self_attn.out_proj", "+ model.decoder.layers.0.fc2",
                      "+ model.decoder.layers.3.self_attn.out_proj", "+ model.decoder.layers.3.fc2"]


@pytest.mark.parametrize("indices, text", [([], ""), ([4], "4"), ([0, 1, 2, 5, 7, 8], "0-2,5,7-8"),
                                           ([29, 28, 0, 1], "0-1,28-29")])
def test_layer_ranges(indices, text):
    assert cli.layer_ranges(indices) == text


@pytest.mark.parametrize("extra, message", [
    (["--batch-size", 3], "--batch-size must be even"),
    (["--ignore-bias", "fc1,q_projj"], "'q_projj' match no linear module"),
    (["--select-layer", "7"], "layer index 7 is out of range"),
    (["--select-layer", "x"], "--select-layer"),
    (["--stereoset", "/does/not/exist.json"], "does not exist"),
    (["--pairs", "file"], "--pairs file needs --pairs-file"),
    (["--bias-types", "colour"], "colour"),
    (["--alpha", "-1"], "--alpha must be finite and >= 0"),
    (["--fair-rank", "2"], "--fair-rank 2 needs --fair-target direction or random-direction"),
    (["--fair-target", "direction", "--fair-rank", "0"], "--fair-rank must be >= 1"),
    (["--fair-target", "direction", "--fair-seed", "3"], "--fair-seed 3 is only used by --fair-target random-direction"),
    (["--fair-target", "random-direction", "--fair-seed", "-1"], "--fair-seed must be >= 0"),
    (["--fair-target", "direction", "--fair-accumulate", "sum-difference"],
     "--fair-accumulate sum-difference applies to --fair-target pairs only"),
    (["--pairs", "sign-shuffled"], "--pairs sign-shuffled changes only the order inside each pair"),
    (["--pairs", "sign-shuffled", "--fair-target", "random-direction"], "only --fair-target direction uses"),
])
def test_input_errors_stop_before_loading(capsys, tmp_path, base_args, monkeypatch, extra, message):
    def fail(*a, **k):
        raise AssertionError("model weights were loaded despite bad input")
    monkeypatch.setattr(cli, "quantize_and_save", fail)
    out = tmp_path / "never"
    code, _, stderr = run_cli(capsys, *base_args, *extra, "--out", out)
    assert code == 2 and message in stderr and stderr.startswith("error: ")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_unknown_fair_target_is_an_argparse_error(capsys, base_args):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(a) for a in [*base_args, "--fair-target", "mean", "--dry-run"]])
    assert exit_info.value.code == 2 and "--fair-target: invalid choice: 'mean'" in capsys.readouterr().err


def test_direction_flags_reach_the_config_and_the_plan(capsys, base_args):
    code, stdout, _ = run_cli(capsys, *base_args, "--fair-target", "random-direction", "--fair-rank", 3,
                              "--fair-seed", 7, "--max-pairs", 4, "--dry-run")
    assert code == 0 and "fair_target=random-direction fair_rank=3 fair_seed=7" in stdout
    args = cli.build_parser().parse_args([str(a) for a in [*base_args, "--fair-target", "direction", "--fair-rank",
                                                           2, "--pairs", "sign-shuffled", "--max-pairs", 6,
                                                           "--dry-run"]])
    plan = cli.plan_run(args)
    qcfg = cli.make_quantize_config(args, plan, "cpu")
    assert (qcfg.fair_target, qcfg.fair_rank, qcfg.fair_seed) == ("direction", 2, 0)
    record = cli.run_record(plan, "cpu", {}, {})
    assert record["arguments"]["fair_target"] == "direction" and record["arguments"]["fair_rank"] == 2
    assert record["calibration"]["mode"] == "sign-shuffled" and record["calibration"]["n_order_flipped"] == 3


@pytest.mark.slow
def test_end_to_end_direction_target_tiny_opt(capsys, tmp_path, base_args):
    """The main job with --fair-target direction: the term reaches every active module (the log says which target)
    and the checkpoint records it."""
    out = tmp_path / "tiny-direction"
    code, stdout, _ = run_cli(capsys, *base_args, "--max-pairs", 4, "--select-layer", "1", "--fair-target",
                              "direction", "--fair-rank", 2, "--log-delta-w", "--no-generate", "--out", out)
    assert code == 0 and "fair_target=direction fair_rank=2" in stdout
    run = json.loads((out / cli.RUN_FILE).read_text())
    assert run["arguments"]["fair_target"] == "direction" and run["arguments"]["fair_rank"] == 2
    saved = json.loads((out / "quantize_config.json").read_text())
    assert (saved["fair_target"], saved["fair_rank"], saved["fair_seed"]) == ("direction", 2, 0)
    records = [json.loads(line) for line in (Path(run["log_dir"]) / "delta_w.jsonl").read_text().splitlines()]
    active = {m["module"] for m in run["modules"] if m["fair_term"]}
    assert {r["module"] for r in records} == active == {"model.decoder.layers.1.self_attn.out_proj",
                                                         "model.decoder.layers.1.fc2"}
    for r in records:
        assert (r["fair_target"], r["fair_rank"], r["n_pairs"]) == ("direction", 2, 4)
        assert len(r["direction_weights"]) == 2 and r["relative_delta_w"] > 0


def test_malformed_stereoset_file(capsys, tmp_path, base_args):
    bad = tmp_path / "dev.json"
    bad.write_text('{"data": {"intersentence": []}}')
    code, _, stderr = run_cli(capsys, *base_args, "--stereoset", bad, "--dry-run")
    assert code == 2 and "intrasentence" in stderr


def test_existing_output_needs_overwrite(capsys, tmp_path, base_args):
    out = tmp_path / "taken"
    out.mkdir()
    code, _, stderr = run_cli(capsys, *base_args, "--out", out)
    assert code == 2 and "--overwrite" in stderr


def test_failed_quantization_leaves_no_output(capsys, tmp_path, base_args, monkeypatch):
    def crash(plan, staging, timings):
        staging.mkdir()
        (staging / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "quantize_and_save", crash)
    out = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt):
        cli.main([str(a) for a in [*base_args, "--max-pairs", 2, "--out", out]])
    assert not out.exists() and not list(tmp_path.iterdir())


def test_equal_length_alignment_keeps_pairs_of_equal_token_count_and_records_it(tiny_opt_dir, base_args):
    from transformers import AutoTokenizer

    from fair_gptq.pairs import calibration_pairs

    args = cli.build_parser().parse_args([str(a) for a in [*base_args, "--pair-alignment", "equal-length",
                                                           "--max-pairs", 20, "--dry-run"]])
    plan = cli.plan_run(args)
    tokenizer = AutoTokenizer.from_pretrained(tiny_opt_dir)
    length = lambda text: len(tokenizer(text)["input_ids"])  # noqa: E731
    all_pairs = calibration_pairs(args.stereoset, "stereo-anti").pairs  # the calib half, unfiltered
    n_equal = sum(length(s) == length(a) for s, a in all_pairs)
    assert 20 < n_equal < len(all_pairs)  # the fixture's tokenizer splits some pairs unevenly
    assert plan.pairs.n_pairs == 20 and all(length(s) == length(a) for s, a in plan.pairs.pairs)
    record = cli.run_record(plan, "cpu", {}, {})["calibration"]
    assert record["pair_alignment"] == "equal-length" and record["pair_filter"] == "equal-length"
    assert (record["n_candidates"], record["n_kept_by_filter"]) == (len(all_pairs), n_equal)
    assert record["n_dropped_by_filter"] == len(all_pairs) - n_equal and record["max_pairs"] == 20
    position = cli.run_record(cli.plan_run(cli.build_parser().parse_args(
        [str(a) for a in [*base_args, "--max-pairs", 20, "--dry-run"]])), "cpu", {}, {})["calibration"]
    assert position["pair_alignment"] == "position" and position["n_dropped_by_filter"] == 0
