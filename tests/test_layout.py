"""The house rules: who may import whom, Markdown links that resolve, results without machine paths, and study
reports that rebuild from the committed per-run files with the same numbers."""
from __future__ import annotations

import ast
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OUR_TOP_LEVEL = {"fair_gptq", "fair_gptq_v7", "evaluation", "study", "study_jobs", "reproduce", "benchmarks",
                 "example_fair_gptq", "tests"}
# what each folder may import of ours (experiments use instruments, never the reverse; fair_gptq/ is the ground floor)
ALLOWED = {
    "fair_gptq": {"fair_gptq"},
    "evaluation": {"evaluation", "fair_gptq"},
    "sanity-check": {"evaluation", "fair_gptq", "study", "study_jobs", "reproduce", "example_fair_gptq"},
    "benchmarks": {"evaluation", "fair_gptq", "fair_gptq_v7", "benchmarks"},  # fair_gptq_v7: the port they time
    "fair_gptq_v7": {"fair_gptq_v7", "fair_gptq"},
}
# the overlay files import only GPTQModel (relatively, as installed inside it) and the standard stack
OVERLAY_THIRD_PARTY = {"torch", "transformers", "packaging"}


def _imports(path: Path) -> list[tuple[str, int]]:
    """(top-level module, relative level) of every import in the file, function-level ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append(((node.module or "").split(".")[0], node.level))
    return found


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_imports_follow_the_layout(folder):
    broken = []
    for file in sorted((ROOT / folder).rglob("*.py")):
        for module, level in _imports(file):
            if level == 0 and module in OUR_TOP_LEVEL and module not in ALLOWED[folder]:
                broken.append(f"{file.relative_to(ROOT)} imports {module}")
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("name", ["gptq.py", "config.py"])
def test_overlay_files_import_only_gptqmodel_and_the_standard_stack(name):
    outside = {m for m, level in _imports(ROOT / name)
               if level == 0 and m not in sys.stdlib_module_names and m not in OVERLAY_THIRD_PARTY}
    assert not outside, f"{name} imports {sorted(outside)}"


def test_fair_gptq_v7_has_no_import_cycle():
    package = ROOT / "fair_gptq_v7"
    graph = {}
    for file in package.glob("*.py"):
        tree = ast.parse(file.read_text(encoding="utf-8"))
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets |= {node.module} if node.module else {a.name for a in node.names}
        graph[file.stem] = {t.split(".")[0] for t in targets} - {file.stem}

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in graph.get(start, ()))

    cycles = sorted(m for m in graph if reaches(m, m))
    assert not cycles, f"import cycle through {cycles}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(markdown: Path) -> set[str]:
    slugs, counts = set(), {}
    in_code = False
    for line in markdown.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := re.match(r"#{1,6}\s+(.*)", line)):
            slug = _slug(m.group(1))
            n = counts.get(slug, 0)
            counts[slug] = n + 1
            slugs.add(slug if n == 0 else f"{slug}-{n}")
    return slugs


def _markdown_files() -> list[Path]:
    skip = {".venv", ".venv-gptqmodel7", "outputs", ".pytest_cache", "node_modules"}
    return sorted(p for p in ROOT.rglob("*.md") if not skip & set(p.relative_to(ROOT).parts))


def test_markdown_links_resolve():
    link = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
    broken = []
    for file in _markdown_files():
        text = re.sub(r"```.*?```", "", file.read_text(encoding="utf-8"), flags=re.S)
        for target in link.findall(text):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            resolved = (file.parent / path).resolve() if path else file
            if not resolved.exists():
                broken.append(f"{file.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(f"{file.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_anchor_slugs_on_known_headings(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Fair-GPTQ on GPTQModel 7.7.0 (`fair_gptq_v7/`)\n## Results\n## Results\n```\n# not a heading\n```\n")
    assert _anchors(page) == {"fair-gptq-on-gptqmodel-770-fair_gptq_v7", "results", "results-1"}


def test_committed_results_hold_no_absolute_paths():
    found = []
    for file in sorted((ROOT / "results").rglob("*.json")):
        def walk(value, where):
            if isinstance(value, dict):
                for key, item in value.items():
                    walk(item, f"{where}/{key}")
            elif isinstance(value, list):
                for item in value:
                    walk(item, f"{where}[]")
            elif isinstance(value, str) and re.match(r"/(?!/)\S", value):
                found.append(f"{file.relative_to(ROOT)}{where}: {value}")
        walk(json.loads(file.read_text(encoding="utf-8")), "")
    assert not found, "\n".join(found[:20])


def test_portable_path_names_each_root(tmp_path, monkeypatch):
    from fair_gptq import paths

    data, cache = tmp_path / "data", tmp_path / "cache"
    (data / "crows_pairs").mkdir(parents=True)
    monkeypatch.setenv("FAIR_GPTQ_DATA", str(data))
    monkeypatch.setenv("FAIR_GPTQ_CACHE", str(cache))
    assert paths.portable_path(data / "crows_pairs" / "x.csv") == "<data>/crows_pairs/x.csv"
    assert paths.portable_path(cache / "models" / "smollm2-135m") == "<cache>/models/smollm2-135m"
    assert paths.portable_path(ROOT / "outputs" / "m") == "outputs/m"
    assert paths.portable_path(tmp_path / "elsewhere" / "model") == "<elsewhere>/model"
    assert paths.portable_path("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    record = {"a": [str(data / "crows_pairs" / "x.csv"), 1.5], "b": {"c": "plain text"}}
    assert paths.portable_record(record) == {"a": ["<data>/crows_pairs/x.csv", 1.5], "b": {"c": "plain text"}}


def test_rewrite_script_changes_only_path_literals():
    sys.path.insert(0, str(ROOT / "sanity-check"))
    import portable_result_paths as rewrite

    text = '{\n "source": "/m/shared/data/crows_pairs/c.csv",\n "path": "/root/.cache/fair_gptq/models/x",\n' \
           ' "out": "/w/study/outputs/study-models/a",\n "tmp": "/tmp/cmp/v2",\n "n": 1508, "t": "a/b"\n}\n'
    new, count = rewrite.rewrite(text)
    assert count == 4
    assert new == '{\n "source": "<data>/crows_pairs/c.csv",\n "path": "<cache>/models/x",\n' \
                  ' "out": "outputs/study-models/a",\n "tmp": "<elsewhere>/v2",\n "n": 1508, "t": "a/b"\n}\n'


STUDIES = {
    "results/smollm2/study": ["--out", "{out}"],
    "results/gemma3-270m": ["--model", "gemma3-270m", "--out", "{out}", "--modes", "stereo-anti,shuffled,unrelated",
                            "--alphas", "0.3,1,3", "--references", "gptq,gptq-g-1,gptq-3bit"],
}


def _without_dates(summary: dict) -> dict:
    return {key: value for key, value in summary.items() if key != "header"}


@pytest.mark.slow
@pytest.mark.parametrize("folder", sorted(STUDIES))
def test_study_report_rebuilds_the_committed_summary(folder, tmp_path, monkeypatch):
    """`reproduce.py --report` on the committed per-run files gives the committed summary.json, number for number."""
    import importlib.util

    monkeypatch.chdir(ROOT)
    out = tmp_path / "study"
    shutil.copytree(ROOT / folder / "runs", out / "runs")
    spec = importlib.util.spec_from_file_location("reproduce_for_layout", ROOT / "sanity-check" / "reproduce.py")
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    argv = [a.format(out=out) for a in STUDIES[folder]] + ["--report"]
    assert reproduce.main(argv) == 0
    rebuilt = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    committed = json.loads((ROOT / folder / "summary.json").read_text(encoding="utf-8"))
    assert _without_dates(rebuilt) == _without_dates(committed)


def test_right_padded_keeps_tokens_in_place_and_masks_the_padding():
    from fair_gptq.batching import right_padded

    ids, mask = right_padded([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
