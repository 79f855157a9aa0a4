"""Local lm-eval task definitions (evaluation/lm_eval_tasks.py) and CrowS-Pairs data versions: no model needed."""

from __future__ import annotations

import json

import pytest
import yaml

from evaluation import lm_eval_tasks
from evaluation.crows_version import KNOWN_CSV, csv_version
from evaluation.data import DataError, sha256_file


def test_pages_from_rows_hand_made():
    rows = ["", " = A = \n", "", " text a \n", "", " = = Section = = \n", "", " more a \n",
            " = B = \n", "", " text b \n", ""]
    assert lm_eval_tasks.pages_from_rows(rows) == [
        " = A = \n \n text a \n \n = = Section = = \n \n more a \n",
        " = B = \n \n text b \n \n",
    ]


def test_pages_of_the_wikitext2_test_rows(wikitext2_dir):
    rows_file = wikitext2_dir / "wikitext-2-raw-v1_test_rows.jsonl"
    rows = [json.loads(line)["text"] for line in rows_file.read_text(encoding="utf-8").splitlines()]
    pages = lm_eval_tasks.pages_from_rows(rows)
    assert len(rows) == 4358 and len(pages) == 62  # the 62 test documents of the hub's document-level split
    assert pages[0].startswith(" = Robert Boulter = \n") and pages[1].startswith(" = Du Fu = \n")
    # nothing lost but the blank row before the first heading
    assert "".join(pages) == "".join(row or " \n" for row in rows[1:])


def test_crows_data_versions(crows_pairs_path):
    assert csv_version(sha256_file(crows_pairs_path), 1508).startswith("original 1,508-pair release")
    variant = crows_pairs_path.parent / "variants" / "kinit_crows_revised.csv"
    if variant.is_file():
        assert csv_version(sha256_file(variant)) == KNOWN_CSV[sha256_file(variant)]
    assert csv_version("0" * 64, 12) == "unrecognised CrowS-Pairs CSV (12 pairs, sha256 000000000000)"


def test_yamls_include_lm_evals_own_tasks_and_override_only_the_data(crows_pairs_path, wikitext2_dir, tmp_path):
    pytest.importorskip("lm_eval")
    local = lm_eval_tasks.resolve_local_data(["crows_pairs_english", "wikitext"], str(crows_pairs_path),
                                             str(wikitext2_dir))
    names = lm_eval_tasks.write_task_yamls(tmp_path, local)
    assert names == [*lm_eval_tasks.CROWS_TASKS, "wikitext"] and "crows_pairs_english_autre" not in names
    installed = lm_eval_tasks.installed_tasks_dir()
    crows = yaml.safe_load((tmp_path / "crows_pairs_english_gender.yaml").read_text())
    assert crows == {"include": str(installed / "crows_pairs" / "crows_pairs_english_gender.yaml"),
                     "task": "crows_pairs_english_gender", "tag": [], "dataset_path": "csv", "dataset_name": None,
                     "dataset_kwargs": {"data_files": {"test": str(crows_pairs_path)}}}
    wiki = (tmp_path / "wikitext.yaml").read_text()
    assert f"include: {installed / 'wikitext' / 'wikitext.yaml'}" in wiki
    assert "process_docs: !function evaluation.lm_eval_tasks.wikitext_pages" in wiki
    assert local.fingerprints(["crows_pairs_english"]) == {"crows_pairs_csv": sha256_file(crows_pairs_path)}
    assert set(local.fingerprints(["wikitext", "arc_easy"])) == {"wikitext_rows"}


def test_lm_eval_wikitext_refuses_the_joined_text(wikitext2_dir):
    with pytest.raises(DataError, match="needs the WikiText-2 rows"):
        lm_eval_tasks.resolve_local_data(["wikitext"], None, str(wikitext2_dir / "wikitext2_test_joined.txt"))
    # tasks without local files read nothing
    assert lm_eval_tasks.resolve_local_data(["arc_easy"]) == lm_eval_tasks.LocalData()


def test_flatten_results_keeps_the_metrics_only():
    from evaluation.lm_eval_bridge import flatten_results

    results = {"wikitext": {"name": "wikitext", "alias": "wikitext", "sample_len": 62, "word_perplexity,none": 9.5,
                            "word_perplexity_stderr,none": "N/A"},
               "arc_easy": {"acc,none": 0.25, "acc_stderr,none": 0.01, "acc,strict": 0.5, "flag,none": True}}
    assert flatten_results(results) == {"arc_easy/acc": 0.25, "arc_easy/acc (strict)": 0.5,
                                        "wikitext/word_perplexity": 9.5}
