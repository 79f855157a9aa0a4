"""The 7.7.0 main job, `python -m fair_gptq_v7`, on the tiny Mistral with StereoSet pairs from the shared data."""
import json

import pytest

from fair_gptq_v7.__main__ import main


def test_bad_input_stops_before_any_weight_is_loaded(tmp_path):
    (tmp_path / "exists").mkdir()
    with pytest.raises(SystemExit, match="exists; pass --overwrite"):
        main(["--out", str(tmp_path / "exists")])
    with pytest.raises(SystemExit, match="must be even"):
        main(["--out", str(tmp_path / "new"), "--batch-size", "3"])


@pytest.mark.slow
def test_main_job_quantizes_saves_and_logs(tiny_mistral_dir, stereoset_dev_path, tmp_path):
    out = tmp_path / "q"
    assert main(["--model", str(tiny_mistral_dir), "--stereoset", str(stereoset_dev_path), "--max-pairs", "4",
                 "--group-size", "32", "--alpha", "0.2", "--strategy", "lower", "--log-delta-w",
                 "--out", str(out), "--no-generate"]) == 0
    record = json.loads((out / "fair_gptq_run.json").read_text())
    assert record["n_pairs"] == 4 and record["gptqmodel"] == "7.7.0"
    saved = json.loads((out / "quantize_config.json").read_text())
    assert saved["alpha"] == 0.2 and saved["select_layer"] == "0,1"  # lower: k = 2 of 4 layers
    modules = {json.loads(line)["module"] for line in (out / "fair_logs" / "delta_w.jsonl").read_text().splitlines()}
    # Mistral's default ignore_bias leaves o_proj and down_proj, in layers 0 and 1
    assert modules == {f"model.layers.{i}.{m}" for i in (0, 1) for m in ("self_attn.o_proj", "mlp.down_proj")}
    assert not list(tmp_path.glob(".q.*"))  # the temporary folder was renamed
