"""The offline lm-eval suite (evaluation/lm_eval_offline.py, lm_eval_groups.py): groups, the shared files checked by
sha256 before any model loads, lm-eval's own tasks building every document, the offline skip line, BBQ marked
partial, and results that name files relative to the data folder."""

from __future__ import annotations

import collections
import hashlib
import json
import shutil

import pytest

from evaluation import lm_eval_bridge, lm_eval_offline, lm_eval_tasks, run_eval
from evaluation.data import DataError, sha256_file
from evaluation.lm_eval_groups import expand_tasks
from evaluation.store import run_path

WINOGENDER = ["winogender_all", "winogender_female", "winogender_male", "winogender_neutral", "winogender_gotcha",
              "winogender_gotcha_female", "winogender_gotcha_male"]
# rows per task, from <data>/lm_eval/README.md and the task folders' READMEs (not from the code under test)
DOCS = {"truthfulqa_mc1": 817, "truthfulqa_mc2": 817, "piqa": 1838, "openbookqa": 500, "boolq": 3270,
        "social_iqa": 1954, "winogender_all": 720, "winogender_female": 240, "winogender_male": 240,
        "winogender_neutral": 240, "winogender_gotcha": 240, "winogender_gotcha_female": 120,
        "winogender_gotcha_male": 120, "bbq": 11956}


def test_groups_expand_to_task_names():
    assert expand_tasks("zeroshot-offline") == ["piqa", "openbookqa", "boolq", "social_iqa", "truthfulqa_mc2"]
    assert expand_tasks("bias-offline") == ["bbq", *WINOGENDER, "crows_pairs_english"]
    paper = ["arc_easy", "arc_challenge", "piqa", "hellaswag", "openbookqa", "xstorycloze_en", "truthfulqa_mc2",
             *WINOGENDER, "bbq", "crows_pairs_english", "simple_cooccurrence_bias"]
    assert expand_tasks("paper") == expand_tasks(None) == expand_tasks(" ") == paper
    # mixed with task names, each task once, in order of first mention
    assert expand_tasks("boolq, bias-offline,piqa,winogender_all") == ["boolq", "bbq", *WINOGENDER,
                                                                       "crows_pairs_english", "piqa"]
    assert expand_tasks("no_such_task") == ["no_such_task"]  # lm-eval reports unknown names


def test_every_offline_file_is_pinned_as_the_shared_sums_say(shared_data_dir):
    sums = shared_data_dir / "SHA256SUMS"
    if not sums.is_file():
        pytest.skip("no SHA256SUMS in the shared data folder")
    lines = (line.split() for line in sums.read_text().splitlines())
    listed = {name.removeprefix("./"): digest for digest, name in lines}
    assert {f: listed[f] for f in lm_eval_offline.FILE_SHA256} == lm_eval_offline.FILE_SHA256


@pytest.fixture(scope="module")
def offline_local(shared_data_dir):
    if not (shared_data_dir / "lm_eval").is_dir():
        pytest.skip("no lm_eval folder in the shared data")
    return lm_eval_tasks.resolve_local_data(list(DOCS))


@pytest.mark.slow
def test_lm_eval_builds_every_document_of_every_offline_task(offline_local, tmp_path):
    pytest.importorskip("lm_eval")
    assert set(offline_local.offline) == set(DOCS)
    names = lm_eval_tasks.write_task_yamls(tmp_path, offline_local)
    installed = lm_eval_tasks.installed_tasks_dir()
    import yaml

    piqa = yaml.safe_load((tmp_path / "piqa.yaml").read_text())
    assert piqa == {"include": str(installed / "piqa" / "piqa.yaml"), "task": "piqa", "tag": [],
                    "dataset_path": "json", "dataset_name": None,
                    "dataset_kwargs": {"data_files": {"validation": str(offline_local.offline["piqa"].path)}},
                    "training_split": None}
    obqa = yaml.safe_load((tmp_path / "openbookqa.yaml").read_text())
    assert obqa["training_split"] is obqa["validation_split"] is None and set(obqa["dataset_kwargs"]["data_files"]) \
        == {"test"}
    manager = lm_eval_bridge.build_task_manager(tmp_path, names, offline_local)
    loaded = manager.load(list(DOCS))["tasks"]
    assert {name: len(task.eval_docs) for name, task in loaded.items()} == DOCS
    first = loaded["bbq"].eval_docs[0]
    assert loaded["bbq"].doc_to_text(first).endswith("\n\nQ: " + first["question"] + "\nA:")  # lm-eval's prompt


def test_fingerprints_name_files_relative_to_the_data_folder(offline_local):
    prints = offline_local.fingerprints(["piqa", "winogender_male", "arc_easy"])
    assert prints == {"lm_eval/piqa/piqa_validation.jsonl": lm_eval_offline.FILE_SHA256[
        "lm_eval/piqa/piqa_validation.jsonl"], "lm_eval/winogender/winogender_all_test.jsonl":
        lm_eval_offline.FILE_SHA256["lm_eval/winogender/winogender_all_test.jsonl"]}


@pytest.fixture
def small_data_root(shared_data_dir, tmp_path):
    """A data folder holding only the OpenBookQA file (126 kB), copied."""
    rel = "lm_eval/openbookqa/openbookqa_main_test.jsonl"
    if not (shared_data_dir / rel).is_file():
        pytest.skip(f"shared data item missing: {rel}")
    (tmp_path / rel).parent.mkdir(parents=True)
    shutil.copy(shared_data_dir / rel, tmp_path / rel)
    (tmp_path / rel).chmod(0o644)
    return tmp_path


def test_missing_and_corrupted_files_are_refused_with_the_expected_sha256(small_data_root):
    obqa, piqa = "lm_eval/openbookqa/openbookqa_main_test.jsonl", "lm_eval/piqa/piqa_validation.jsonl"
    good = lm_eval_tasks.resolve_local_data(["openbookqa"], data_root=small_data_root)
    assert good.offline["openbookqa"].sha256 == sha256_file(small_data_root / obqa)
    with pytest.raises(DataError, match=f"{piqa} is missing .*expected sha256 {lm_eval_offline.FILE_SHA256[piqa]}"):
        lm_eval_tasks.resolve_local_data(["openbookqa", "piqa"], data_root=small_data_root)
    with (small_data_root / obqa).open("a") as handle:
        handle.write("\n")
    with pytest.raises(DataError, match=f"{obqa} .*has sha256 {sha256_file(small_data_root / obqa)}, expected "
                                        f"{lm_eval_offline.FILE_SHA256[obqa]}"):
        lm_eval_tasks.resolve_local_data(["openbookqa"], data_root=small_data_root)


def test_cli_refuses_a_corrupted_file_before_loading_a_model(small_data_root, tiny_opt_dir, tmp_path, capsys,
                                                             monkeypatch):
    import evaluation.models

    (small_data_root / "lm_eval/openbookqa/openbookqa_main_test.jsonl").write_text("{}\n")
    monkeypatch.setenv("FAIR_GPTQ_DATA", str(small_data_root))
    monkeypatch.setattr(evaluation.models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    argv = ["--model", f"fp={tiny_opt_dir}", "--tasks", "lm_eval", "--lm-eval-tasks", "openbookqa",
            "--out", str(tmp_path / "res")]
    assert run_eval.main(argv) == 2
    err = capsys.readouterr().err
    assert "openbookqa_main_test.jsonl" in err and lm_eval_offline.FILE_SHA256[
        "lm_eval/openbookqa/openbookqa_main_test.jsonl"] in err


def test_offline_skips_need_no_hub_and_no_model(tiny_opt_dir, tmp_path, capsys, monkeypatch):
    import evaluation.models

    monkeypatch.setattr(lm_eval_offline, "hub_offline", lambda: True)
    monkeypatch.setattr(evaluation.models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    argv = ["--model", f"fp={tiny_opt_dir}", "--tasks", "lm_eval", "--lm-eval-tasks", "arc_easy,hellaswag",
            "--out", str(tmp_path / "res")]
    assert run_eval.main(argv) == 1  # nothing left to run
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["lm_eval: arc_easy unavailable",
                                                       "lm_eval: hellaswag unavailable"]
    assert "ARC files" in lines[0] and "Hub" in lines[0]
    # online they are left to lm-eval's hub datasets; with no shared folder the offline tasks are skipped too
    monkeypatch.setattr(lm_eval_offline, "hub_offline", lambda: False)
    assert lm_eval_bridge.skipped_offline(["arc_easy"], lm_eval_tasks.LocalData()) == {}
    skipped = lm_eval_offline.offline_skips(["piqa", "arc_easy", "my_task"], [])
    assert set(skipped) == {"piqa", "arc_easy"} and "no shared data folder" in skipped["piqa"]


def _strings(obj):
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield key
            yield from _strings(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _strings(value)
    elif isinstance(obj, str):
        yield obj


@pytest.mark.slow
def test_bbq_record_partial_relative_sources_and_one_skip_line(tiny_mistral_dir, offline_local, tmp_path, capsys,
                                                               monkeypatch):
    monkeypatch.setattr(lm_eval_offline, "hub_offline", lambda: True)
    out = tmp_path / "res"
    argv = ["--model", f"fp={tiny_mistral_dir}", "--tasks", "lm_eval", "--lm-eval-tasks", "bbq,arc_easy",
            "--max-items", "3", "--batch-size", "8", "--no-progress", "--out", str(out)]
    assert run_eval.main(argv) == 0
    printed = capsys.readouterr().out
    assert [line for line in printed.splitlines() if "unavailable" in line] == [
        f"fp lm_eval: arc_easy unavailable ({lm_eval_offline.offline_skips(['arc_easy'], [])['arc_easy']})"]
    run = json.loads(run_path(out, "fp", "lm_eval").read_text())
    assert run["settings"]["scorer"] == "shared-context" and run["settings"]["skipped_offline"] == ["arc_easy"]
    assert run["data"]["scorer"]["name"] == "shared-context" and run["data"]["scorer"]["requests_shared"] > 0

    partial = run["data"]["partial"]["bbq"]
    assert partial["partial"] is True and partial["categories_scored"] == ["Age"]  # the file's first 3 docs: Age
    assert partial["categories_missing"] == ["Gender_identity", "Race_ethnicity", "Race_x_SES", "Race_x_gender", "SES"]
    results = run["metrics"]["results"]["bbq"]
    assert results["partial"] is True and 0 <= results["acc,none"] <= 1
    assert "amb_bias_score_Age,none" in results and "disamb_bias_score_Age,none" in results
    assert not [key for key in results if "Gender_identity" in key or key.startswith("amb_bias_score_SES")]
    assert len(partial["metrics_dropped"]) == 5 * 4  # amb/disamb x value/stderr per missing category
    bbq_file = "lm_eval/bbq/bbq_partial_test.jsonl"
    assert run["data"]["sources"]["bbq"] == {"source": bbq_file, "sha256": lm_eval_offline.FILE_SHA256[bbq_file],
                                             "version": lm_eval_offline.BBQ_PARTIAL["note"]}
    assert not [s for s in _strings(run) if s.startswith("/") or str(tmp_path) in s]  # no absolute path anywhere


def test_bbq_partial_description_matches_the_file(shared_data_dir):
    path = shared_data_dir / "lm_eval/bbq/bbq_partial_test.jsonl"
    if not path.is_file():
        pytest.skip("no BBQ file in the shared data")
    counts = collections.Counter(json.loads(line)["category"] for line in path.read_text().splitlines())
    info = lm_eval_offline.BBQ_PARTIAL
    assert sorted(counts) == info["categories_present"] and sum(counts.values()) == info["rows"]
    assert not set(counts) & set(info["categories_missing"]) and len(counts) + len(info["categories_missing"]) == 11


@pytest.mark.slow
def test_seeded_subsets_and_per_item_records_rebuild_lm_evals_aggregates(tiny_mistral_dir, offline_local, tmp_path):
    """A seeded subset scores the documents numpy's generator draws (not the file's first ones: BBQ is ordered by
    category), and the stored per-item columns give back lm-eval's own aggregates."""
    import numpy as np
    from lm_eval.tasks.bbq.utils import agg_amb_bias_scores, agg_disamb_bias_scores

    out = tmp_path / "res"
    argv = ["--model", f"fp={tiny_mistral_dir}", "--tasks", "lm_eval", "--lm-eval-tasks", "bbq,piqa",
            "--lm-eval-subset", "bbq=24,piqa=6", "--seed", "3", "--batch-size", "8", "--no-progress",
            "--out", str(out)]
    assert run_eval.main(argv) == 0
    run = json.loads(run_path(out, "fp", "lm_eval").read_text())
    n_bbq = lm_eval_offline.BBQ_PARTIAL["rows"]
    expected = {"bbq": sorted(np.random.default_rng(3).choice(n_bbq, size=24, replace=False).tolist()),
                "piqa": sorted(np.random.default_rng(3).choice(1838, size=6, replace=False).tolist())}
    for task, indices in expected.items():
        items = run["per_item"][task]
        assert items["doc_id"] == indices
        subset = run["data"]["subsets"][task]
        assert subset["n"] == len(indices) and subset["indices_sha256"] == hashlib.sha256(
            json.dumps(indices).encode()).hexdigest()
        assert run["metrics"]["results"][task]["acc,none"] == pytest.approx(np.mean(items["acc"]))
    assert run["settings"]["subsets"] == {"bbq": 24, "piqa": 6}

    piqa = run["per_item"]["piqa"]  # accuracy is "the most likely choice is the gold one", item by item
    assert piqa["acc"] == [float(np.argmax(lls) == gold) for lls, gold in zip(piqa["loglikelihoods"], piqa["target"])]
    bbq, results = run["per_item"]["bbq"], run["metrics"]["results"]["bbq"]
    assert len(set(bbq["category"])) > 1  # the first 24 rows would all be Age
    tuples = [tuple(t) for t in bbq["amb_bias_score"]]
    for name, agg in (("amb_bias_score", agg_amb_bias_scores), ("disamb_bias_score", agg_disamb_bias_scores)):
        want = agg(tuples)
        got = results[f"{name},none"]
        assert (np.isnan(want) and (got is None or str(got) == "nan" or np.isnan(got))) or got == pytest.approx(want)


def test_subset_options_are_refused_before_any_model_loads(tiny_opt_dir, tmp_path, capsys):
    base = ["--model", f"fp={tiny_opt_dir}", "--tasks", "lm_eval", "--lm-eval-tasks", "piqa", "--out", str(tmp_path)]
    for extra, message in ((["--lm-eval-subset", "piqa=5", "--max-items", "3"], "--max-items"),
                           (["--lm-eval-subset", "boolq=5"], "not among --lm-eval-tasks"),
                           (["--lm-eval-subset", "piqa=0"], "positive integer"),
                           (["--lm-eval-subset", "piqa"], "TASK=N")):
        assert run_eval.main(base + extra) == 2
        assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_subset_indices_are_seeded_sorted_and_whole_when_large():
    from evaluation import subsets

    a = subsets.subset_indices(100, 10, seed=1)
    assert a == subsets.subset_indices(100, 10, seed=1) != subsets.subset_indices(100, 10, seed=2)
    assert a == sorted(set(a)) and len(a) == 10 and all(0 <= i < 100 for i in a)
    assert subsets.subset_indices(7, 10, seed=1) == subsets.subset_indices(7, None, seed=1) == list(range(7))
    assert subsets.indices_sha256([0, 5, 9]) == hashlib.sha256(b"[0, 5, 9]").hexdigest()
    assert subsets.parse_subset_spec("piqa=1000, truthfulqa_mc2=all") == {"piqa": 1000, "truthfulqa_mc2": None}
