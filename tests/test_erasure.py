"""INLP and LEACE erasers (fair_gptq/erasure, evaluation/fit_eraser.py): the math on synthetic data, the file,
the refusal of evaluation data, and the inference hook on tiny models. Expected values are computed here
independently (sklearn, concept-erasure, plain matrix algebra), never by the function under test."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from stereoset_helpers import item_and_label, synthetic_items, write_stereoset
from test_eval_models import no_torch_compile, tiny_opt_gptq_dir  # noqa: F401 (fixtures)

from fair_gptq.erasure.artifact import Eraser, EraserFileError, file_sha256, load_eraser, save_eraser
from fair_gptq.erasure.fit import erase_numpy
from fair_gptq.erasure.fitting_data import EvaluationDataError, fitting_data
from fair_gptq.erasure.hook import attach_eraser
from fair_gptq.erasure.inlp import fit_inlp
from fair_gptq.erasure.leace import fit_leace
from fair_gptq.erasure.representations import pooled_representations
from fair_gptq.pairs import calibration_pairs

CHANCE_TOLERANCE = 0.05  # |accuracy - majority rate| allowed for "at chance"


def linear_signal(n: int, d: int, strength: float, seed: int = 0,
                  correlated: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Balanced binary labels shifting Gaussian data by +-strength along one random unit direction."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    mixing = np.eye(d)
    if correlated:  # LEACE then differs from an orthogonal projection, and INLP needs more than one direction
        mixing = rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d)
    x = rng.normal(size=(n, d)) @ mixing.T + strength * np.outer(2 * labels - 1, direction) + 3.0
    return x, labels


def probe_accuracy(x: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression

    return float(LogisticRegression(max_iter=5000).fit(x, labels).score(x, labels))


# ----------------------------------------------------------------------------- INLP


def test_inlp_projection_is_an_orthogonal_projection_that_annihilates_every_classifier():
    x, labels = linear_signal(400, 12, strength=2.0)
    result = fit_inlp(x, labels, iterations=4)
    p = result.projection
    assert result.directions.shape == (4, 12)
    np.testing.assert_allclose(p, p.T, atol=1e-12)  # symmetric
    np.testing.assert_allclose(p @ p, p, atol=1e-10)  # idempotent
    for w in result.directions:
        assert np.linalg.norm(p @ w) <= 1e-8 * np.linalg.norm(w)
    # each iteration removes one new dimension: trace(I - P) = rank of the removed span
    assert np.trace(np.eye(12) - p) == pytest.approx(4, abs=1e-8)
    assert result.rank_removed == 4


def test_inlp_first_iteration_is_bias_benchs_linear_svc_and_its_nullspace():
    from sklearn.svm import LinearSVC

    x, labels = linear_signal(300, 10, strength=1.5, seed=1)
    w = LinearSVC(fit_intercept=False, class_weight=None, dual=False, random_state=0).fit(x, labels).coef_[0]
    expected = np.eye(10) - np.outer(w, w) / (w @ w)
    result = fit_inlp(x, labels, iterations=1)
    np.testing.assert_allclose(result.directions[0], w, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(result.projection, expected, atol=1e-12)


def test_inlp_removes_a_strong_linear_signal():
    # isotropic noise: the signal lies along one direction, which the first classifiers find
    x, labels = linear_signal(2000, 8, strength=3.0, seed=2, correlated=False)
    assert probe_accuracy(x, labels) > 0.95
    result = fit_inlp(x - x.mean(axis=0), labels, iterations=2)  # centred: the SVC has no intercept
    assert abs(probe_accuracy(x @ result.projection, labels) - 0.5) < 0.1


def test_inlp_refuses_bad_input_before_fitting():
    x, labels = linear_signal(20, 4, strength=1.0)
    with pytest.raises(ValueError, match="positive integer"):
        fit_inlp(x, labels, iterations=0)
    with pytest.raises(ValueError, match="two classes"):
        fit_inlp(x, np.zeros(20, dtype=int), iterations=1)
    with pytest.raises(ValueError, match="shape"):
        fit_inlp(x[:10], labels, iterations=1)


# ----------------------------------------------------------------------------- LEACE


def test_leace_leaves_a_fresh_probe_at_chance():
    x, labels = linear_signal(4000, 16, strength=1.5, seed=3)
    chance = np.bincount(labels).max() / len(labels)
    assert probe_accuracy(x, labels) > chance + 0.3  # a strong linear signal before
    result = fit_leace(x, labels)
    erased = erase_numpy(x, result.projection, result.bias)
    assert abs(probe_accuracy(erased, labels) - chance) < CHANCE_TOLERANCE
    # LEACE's defining property, checked directly: both classes have the same mean afterwards
    np.testing.assert_allclose(erased[labels == 1].mean(axis=0), erased[labels == 0].mean(axis=0), atol=1e-8)
    assert result.rank_removed == 1


def test_eraser_applies_leace_exactly_as_concept_erasure_does():
    from concept_erasure import LeaceFitter

    x, labels = linear_signal(500, 8, strength=1.0, seed=4)
    library = LeaceFitter.fit(torch.from_numpy(x), torch.from_numpy(labels.astype(np.float64)).unsqueeze(1)).eraser
    result = fit_leace(x, labels)
    eraser = Eraser("leace", torch.from_numpy(result.projection), torch.from_numpy(result.bias))
    fresh = torch.from_numpy(np.random.default_rng(5).normal(size=(64, 8)) + 2.0)
    torch.testing.assert_close(eraser.apply(fresh), library(fresh), rtol=1e-9, atol=1e-9)


def test_heldout_check_refits_the_eraser_on_training_folds_only():
    from fair_gptq.erasure.diagnostics import heldout_accuracy

    x, labels = linear_signal(1000, 8, strength=1.5, seed=6)
    groups = np.arange(len(labels)) // 2
    assert heldout_accuracy(x, labels, groups) > 0.8
    seen = []

    def refit(x_train, labels_train):
        result = fit_leace(x_train, labels_train)
        seen.append({row.tobytes() for row in x_train})

        def erase(rows):
            assert len(seen[-1] & {row.tobytes() for row in rows}) in (0, len(rows))  # train rows, or unseen ones
            return erase_numpy(rows, result.projection, result.bias)
        return erase

    assert abs(heldout_accuracy(x, labels, groups, refit=refit) - 0.5) < CHANCE_TOLERANCE
    assert len(seen) == 5 and all(len(rows) == 800 for rows in seen)


# ----------------------------------------------------------------------------- the file


def test_artifact_round_trips_and_is_written_atomically(tmp_path):
    projection, bias = torch.randn(6, 6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    metadata = {"location": "x", "fitting": {"label_mode": "stereo-anti", "n": 3}, "list": [1.5, None]}
    path = tmp_path / "erasers" / "e.pt"
    sha = save_eraser(Eraser("leace", projection, bias, metadata), path)
    assert sha == file_sha256(path)
    assert [p.name for p in path.parent.iterdir()] == ["e.pt"]  # no temporary file left behind
    loaded = load_eraser(path)
    assert loaded.kind == "leace" and loaded.metadata == metadata
    assert torch.equal(loaded.projection, projection) and torch.equal(loaded.bias, bias)
    save_eraser(Eraser("inlp", projection), tmp_path / "inlp.pt")
    assert load_eraser(tmp_path / "inlp.pt").bias is None


def test_eraser_computes_in_float32_and_returns_the_hidden_dtype():
    projection, bias = torch.randn(8, 8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    hidden = torch.randn(3, 5, 8).to(torch.bfloat16)
    out = Eraser("leace", projection, bias).apply(hidden)
    expected = ((hidden.float() - bias.float()) @ projection.float().T + bias.float()).to(torch.bfloat16)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)


def test_bad_eraser_files_and_kinds_are_refused(tmp_path):
    with pytest.raises(EraserFileError, match="does not exist"):
        load_eraser(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(EraserFileError, match="not a readable eraser file"):
        load_eraser(tmp_path / "junk.pt")
    torch.save({"format": "something/else"}, tmp_path / "other.pt")
    with pytest.raises(EraserFileError, match="format"):
        load_eraser(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="unknown eraser kind"):
        Eraser("sentence-debias", torch.eye(3))
    with pytest.raises(ValueError, match="square"):
        Eraser("inlp", torch.ones(3, 4))
    with pytest.raises(ValueError, match="bias"):
        Eraser("leace", torch.eye(3), torch.zeros(4))


# ----------------------------------------------------------------------------- fitting data


@pytest.fixture()
def synthetic_dev(tmp_path):
    return write_stereoset(tmp_path / "dev.json", synthetic_items({"gender": 12, "race": 12}))


def test_fitting_data_labels_stereotypes_one_and_refuses_the_evaluation_half(synthetic_dev):
    data = fitting_data(calibration_pairs(synthetic_dev, "stereo-anti", part="calib"), "stereo-anti")
    expected = [1 if item_and_label(s)[1] == "stereotype" else 0 for s in data.sentences]
    assert data.labels.tolist() == expected and sum(expected) * 2 == len(expected)
    unrelated = fitting_data(calibration_pairs(synthetic_dev, "unrelated", part="calib"), "unrelated")
    assert {item_and_label(s)[1] for s, y in zip(unrelated.sentences, unrelated.labels) if y == 0} == {"unrelated"}
    for part in ("eval", "all"):
        with pytest.raises(EvaluationDataError, match=f"'{part}' part"):
            fitting_data(calibration_pairs(synthetic_dev, "stereo-anti", part=part), "stereo-anti")


def test_fitting_data_refuses_unverifiable_pairs_and_mismatched_modes(synthetic_dev, tmp_path):
    pairs_file = tmp_path / "pairs.json"
    pairs_file.write_text(json.dumps([["He is a nurse.", "She is a nurse."]]))
    with pytest.raises(EvaluationDataError, match="no StereoSet split"):
        fitting_data(calibration_pairs(None, "file", pairs_file=pairs_file), "stereo-anti")
    stereo = calibration_pairs(synthetic_dev, "stereo-anti", part="calib")
    with pytest.raises(ValueError, match="needs pairs of mode 'unrelated'"):
        fitting_data(stereo, "unrelated")
    with pytest.raises(ValueError, match="unknown label mode"):
        fitting_data(stereo, "gender")


def test_shuffled_labels_keep_one_positive_per_pair_in_a_seeded_random_order(synthetic_dev):
    pairs = calibration_pairs(synthetic_dev, "stereo-anti", part="calib")
    first = fitting_data(pairs, "shuffled-labels", seed=0)
    assert first.sentences == pairs.sentences
    assert (first.labels[0::2] + first.labels[1::2] == 1).all()
    stereotype_first = np.array([item_and_label(s)[1] == "stereotype" for s in first.sentences[0::2]])
    agreement = (first.labels[0::2] == 1) == stereotype_first
    assert 0 < agreement.sum() < len(agreement)  # some pairs keep the true order, some are flipped
    assert fitting_data(pairs, "shuffled-labels", seed=0).labels.tolist() == first.labels.tolist()
    assert fitting_data(pairs, "shuffled-labels", seed=1).labels.tolist() != first.labels.tolist()


# ----------------------------------------------------------------------------- representations and the hook


FINAL_NORM = {"mistral": "model.norm", "opt": "model.decoder.final_layer_norm"}


def _load(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(params=["mistral", "opt"])
def tiny_model(request):
    model_dir = request.getfixturevalue(f"tiny_{request.param}_dir")
    model, tokenizer = _load(model_dir)
    return request.param, model, tokenizer, model_dir


def test_pooled_representations_average_the_final_norm_output_over_sentence_tokens(tiny_model):
    family, model, tokenizer, _ = tiny_model
    sentences = ["The nurse helped the patient.", "He is an engineer who fixed the old bridge yesterday.", "Hi."]
    pooled = pooled_representations(model, tokenizer, sentences, prefix_id=tokenizer.bos_token_id, batch_size=3)
    norm = model.get_submodule(FINAL_NORM[family])
    for row, sentence in enumerate(sentences):  # one sentence at a time, no padding, read at the final norm
        captured = []
        handle = norm.register_forward_hook(lambda module, args, output: captured.append(output))
        ids = [tokenizer.bos_token_id, *tokenizer(sentence, add_special_tokens=False)["input_ids"]]
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]))
        handle.remove()
        np.testing.assert_allclose(pooled[row], captured[0][0, 1:].mean(dim=0).double().numpy(), atol=1e-5)


def _outputs_of_every_module(model, input_ids) -> dict[str, torch.Tensor]:
    """Each module's (first) output tensor in one forward pass; the model's own entry ("") is its logits."""
    from transformers.utils import ModelOutput

    outputs, handles = {}, []
    for name, module in model.named_modules():
        def record(module, args, output, name=name):
            first = output[0] if isinstance(output, (tuple, ModelOutput)) else output
            if isinstance(first, torch.Tensor):
                outputs[name] = first.detach().clone()
        handles.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(input_ids=input_ids)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


@pytest.mark.parametrize("affine", [False, True], ids=["inlp-like", "leace-like"])
def test_hook_erases_only_the_head_input(tiny_model, affine):
    family, model, tokenizer, _ = tiny_model
    d = model.get_output_embeddings().in_features
    generator = torch.Generator().manual_seed(0)
    if affine:  # an oblique projection with a bias, like LEACE's
        left, right = torch.randn(d, 2, generator=generator), torch.randn(2, d, generator=generator)
        projection, bias = torch.eye(d) - left @ torch.linalg.pinv(right @ left) @ right, torch.randn(d, generator=generator)
    else:  # an orthogonal projection, like INLP's
        basis, _ = torch.linalg.qr(torch.randn(d, 3, generator=generator))
        projection, bias = torch.eye(d) - basis @ basis.T, None
    input_ids = torch.tensor([tokenizer("The nurse said she would help the engineer.")["input_ids"]])
    plain = _outputs_of_every_module(model, input_ids)
    handle = attach_eraser(model, Eraser("leace" if affine else "inlp", projection.double(),
                                         None if bias is None else bias.double()))
    erased = _outputs_of_every_module(model, input_ids)
    with torch.no_grad():  # out of place: the final hidden state the model returns is not the erased one
        returned = model(input_ids=input_ids, output_hidden_states=True).hidden_states[-1]
    handle.remove()
    assert torch.equal(returned, plain[FINAL_NORM[family]])
    changed = {name for name in plain if not torch.equal(plain[name], erased[name])}
    assert changed == {"lm_head", ""}  # the head and the model's logits; every other module as before
    h = plain[FINAL_NORM[family]]
    expected_input = h @ projection.T if bias is None else (h - bias) @ projection.T + bias
    expected_logits = expected_input @ model.get_output_embeddings().weight.T
    torch.testing.assert_close(erased["lm_head"], expected_logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(_outputs_of_every_module(model, input_ids)["lm_head"], plain["lm_head"])  # removed


def test_hook_refuses_an_eraser_of_another_width(tiny_mistral_dir):
    model, _ = _load(tiny_mistral_dir)
    with pytest.raises(ValueError, match="fitted on another model"):
        attach_eraser(model, Eraser("inlp", torch.eye(7)))


# ----------------------------------------------------------------------------- CLI and evaluation


def test_fit_cli_writes_an_eraser_that_load_model_applies(tiny_mistral_dir, synthetic_dev, tmp_path, capsys):
    from evaluation import fit_eraser
    from evaluation.models import load_model

    out = tmp_path / "leace.pt"
    argv = ["--model", str(tiny_mistral_dir), "--method", "leace", "--labels", "stereo-anti", "--max-pairs", "8",
            "--stereoset", str(synthetic_dev), "--device", "cpu", "--out", str(out)]
    assert fit_eraser.main(argv) == 0, capsys.readouterr()
    eraser = load_eraser(out)
    fitting = eraser.metadata["fitting"]
    assert eraser.kind == "leace" and fitting["n_sentences"] == 16 and fitting["pairs"]["split"]["part"] == "calib"
    assert json.loads((tmp_path / "leace.pt.json").read_text())["sha256"] == file_sha256(out)
    checks = eraser.metadata["diagnostics"]
    assert checks["chance"] == 0.5 and checks["fit_set"]["after"] == pytest.approx(0.5, abs=0.2)
    assert fit_eraser.main(argv) == 2  # --out exists

    lm = load_model(str(tiny_mistral_dir), device="cpu", eraser=str(out))
    assert lm.describe()["eraser"]["sha256"] == file_sha256(out)
    plain = load_model(str(tiny_mistral_dir), device="cpu")
    assert "eraser" not in plain.describe()
    ids = torch.tensor([[1, 40, 41, 42]])
    captured = []
    plain.model.model.norm.register_forward_hook(lambda module, args, output: captured.append(output))
    with torch.no_grad():
        plain.model(input_ids=ids)
        actual = lm.model(input_ids=ids).logits
    h, p, b = captured[0].double(), eraser.projection, eraser.bias
    expected = ((h - b) @ p.T + b) @ plain.model.lm_head.weight.double().T
    torch.testing.assert_close(actual.double(), expected, rtol=1e-4, atol=1e-4)


def test_fit_cli_refuses_bad_arguments_before_loading_a_model(tmp_path, capsys):
    from evaluation import fit_eraser

    base = ["--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "e.pt")]
    assert fit_eraser.main(base + ["--method", "pca"]) == 2
    assert fit_eraser.main(base + ["--method", "inlp", "--labels", "gender"]) == 2
    assert fit_eraser.main(base + ["--method", "leace", "--iterations", "5"]) == 2
    assert "--iterations" in capsys.readouterr().err
    assert fit_eraser.main(base + ["--method", "inlp", "--max-pairs", "0"]) == 2


def test_run_eval_records_the_eraser_in_the_settings_of_its_model_only(tiny_mistral_dir, tmp_path):
    from evaluation import run_eval

    file = tmp_path / "inlp.pt"
    save_eraser(Eraser("inlp", torch.eye(128, dtype=torch.float64), None,
                       {"fitting": {"label_mode": "shuffled-labels"}}), file)
    args = run_eval.build_parser().parse_args(["--out", str(tmp_path), "--model", f"m={tiny_mistral_dir}"])
    data = {"crows_pairs": SimpleNamespace(sha256="abc")}
    plain = run_eval.task_settings("crows_pairs", args, str(tiny_mistral_dir), data, "cpu", "float32", [])
    erased = run_eval.task_settings("crows_pairs", args, str(tiny_mistral_dir), data, "cpu", "float32", [], str(file))
    assert "eraser" not in plain
    assert erased["eraser"] == {"file": "inlp.pt", "sha256": file_sha256(file), "kind": "inlp",
                                "labels": "shuffled-labels", "hidden_size": 128, "location": None}
    assert {k: v for k, v in erased.items() if k != "eraser"} == plain

    assert run_eval.parse_erasers([f"m={file}"], ["m", "n"]) == {"m": str(file)}
    for specs, message in (([f"x={file}"], "no --model"), ([f"m={file}", f"m={file}"], "twice"),
                           (["m"], "NAME=FILE"), ([f"m={tmp_path / 'none.pt'}"], "does not exist")):
        with pytest.raises(run_eval.UsageError, match=message):
            run_eval.parse_erasers(specs, ["m", "n"])


def test_hook_applies_to_a_gptq_model_as_loaded_for_evaluation(tiny_opt_gptq_dir, tmp_path):
    from evaluation.models import load_model

    d = 128
    basis, _ = torch.linalg.qr(torch.randn(d, 4, generator=torch.Generator().manual_seed(1)))
    file = tmp_path / "inlp.pt"
    save_eraser(Eraser("inlp", (torch.eye(d) - basis @ basis.T).double()), file)
    plain = load_model(str(tiny_opt_gptq_dir), device="cpu")
    erased = load_model(str(tiny_opt_gptq_dir), device="cpu", eraser=str(file))
    assert (erased.kind, erased.describe()["eraser"]["kind"]) == ("gptq", "inlp")
    captured = []
    plain.model.model.decoder.final_layer_norm.register_forward_hook(lambda module, args, out: captured.append(out))
    ids = torch.tensor([[2, 50, 60, 70, 80]])
    with torch.no_grad():
        plain.model(input_ids=ids)
        actual = erased.model(input_ids=ids).logits
    expected = captured[0] @ (torch.eye(d) - basis @ basis.T).T @ plain.model.lm_head.weight.T
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_run_eval_warns_when_an_eraser_was_fitted_on_the_evaluated_items(tmp_path, capsys):
    from evaluation import run_eval

    split = {"source_sha256": "abc", "split_version": 2, "seed": 0, "calib_fraction": 0.5}
    for fitted_part, warned in (("calib", False), ("eval", True)):
        file = tmp_path / f"{fitted_part}.pt"
        save_eraser(Eraser("inlp", torch.eye(4), None, {"fitting": {"pairs": {"split": {**split, "part": fitted_part}}}}),
                    file)
        run_eval._warn_if_erasers_saw_evaluated_items({"m": str(file)}, {**split, "part": "eval"})
        assert ("its eraser was fitted on part 'eval'" in capsys.readouterr().out) == warned
