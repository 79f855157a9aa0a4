#!/usr/bin/env python
"""Benchmark: lm-eval's HFLM against the shared-context scorer (evaluation/lm_eval_scorer.py) on multiple choice.

Both score the same requests, in one process: a seeded subset of documents of each task (PIQA, OpenBookQA, BBQ on
the shared offline files), built by lm-eval's own task code (our local YAMLs), with the same model, tokenizer and
batch size. Reported per task: requests, tokens computed (every token fed to the model, padding included, counted by
a forward pre-hook on the model, so neither scorer counts its own), seconds, speed-up, max |delta LL| over requests,
and whether is_greedy and lm-eval's per-document ``acc`` (the task's own process_results) agree. Target: >= 2x.
BBQ gets 50 documents by default: HFLM alone takes ~90 s on them on one CPU thread (12 choices per question).

    python benchmarks/bench_mc_scoring.py --docs piqa=100,openbookqa=100,bbq=50 --threads 1

writes results/bench/bench_mc_scoring_smollm2_cpu_<date>.json (no absolute paths in it).
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import date  # noqa: E402

DEFAULT_DOCS = "piqa=100,openbookqa=100,bbq=50"


def parse_docs(text: str) -> dict[str, int]:
    docs = {}
    for part in text.split(","):
        task, _, n = part.partition("=")
        docs[task.strip()] = int(n)
    return docs


def build_requests(tasks: dict[str, int], seed: int) -> dict:
    """{task: (lm-eval task object, its Instances for a seeded subset of documents)}."""
    import numpy as np

    from evaluation import lm_eval_bridge, lm_eval_tasks

    local = lm_eval_tasks.resolve_local_data(list(tasks))
    built = {}
    with tempfile.TemporaryDirectory(prefix="bench_mc_") as folder:
        manager = lm_eval_bridge.build_task_manager(Path(folder), list(tasks), local)
        for name, n_docs in tasks.items():
            task = manager.load([name])["tasks"][name]
            n_all = len(task.eval_docs)
            picked = sorted(int(i) for i in np.random.default_rng(seed).choice(n_all, min(n_docs, n_all), False))
            task.build_all_requests(samples=picked)
            built[name] = (task, list(task.instances), local.offline[name].describe())
    return built


class TokenCounter:
    """Counts every input token the model is fed (a forward pre-hook: independent of either scorer)."""

    def __init__(self, model):
        self.tokens = 0
        self.calls = 0
        self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        ids = args[0] if args else kwargs.get("input_ids")
        self.tokens += ids.numel()
        self.calls += 1

    def close(self):
        self._handle.remove()


def score(wrapper, model, instances) -> dict:
    counter = TokenCounter(model)
    started = time.perf_counter()
    answers = wrapper.loglikelihood(instances, disable_tqdm=True)
    seconds = time.perf_counter() - started
    counter.close()
    return {"answers": answers, "seconds": seconds, "tokens": counter.tokens, "forward_calls": counter.calls}


def doc_accuracies(task, instances, answers) -> list[float]:
    """lm-eval's own per-document acc (the task's process_results) from per-request answers."""
    by_doc: dict[int, list] = {}
    for instance, answer in zip(instances, answers, strict=True):
        by_doc.setdefault(instance.doc_id, []).append((instance.idx, instance.doc, answer))
    accs = []
    for doc_id in sorted(by_doc):
        rows = sorted(by_doc[doc_id], key=lambda row: row[0])
        accs.append(float(task.process_results(rows[0][1], [answer for _, _, answer in rows])["acc"]))
    return accs


def compare(task, instances, hflm: dict, shared: dict, stats: dict) -> dict:
    deltas = [abs(a[0] - b[0]) for a, b in zip(hflm["answers"], shared["answers"], strict=True)]
    acc_h, acc_s = doc_accuracies(task, instances, hflm["answers"]), doc_accuracies(task, instances, shared["answers"])
    return {
        "docs": len(acc_h), "requests": len(instances),
        "hflm": {k: round(v, 3) if isinstance(v, float) else v for k, v in hflm.items() if k != "answers"},
        "shared_context": {**{k: round(v, 3) if isinstance(v, float) else v for k, v in shared.items()
                              if k != "answers"}, **stats},
        "speedup_seconds": round(hflm["seconds"] / shared["seconds"], 2),
        "speedup_tokens": round(hflm["tokens"] / shared["tokens"], 2),
        "max_abs_delta_ll": max(deltas),
        "is_greedy_identical": all(a[1] == b[1] for a, b in zip(hflm["answers"], shared["answers"], strict=True)),
        # TruthfulQA mc2's acc is a probability mass, a float: identical only to rounding
        "acc_identical": acc_h == acc_s, "max_abs_delta_acc": max(abs(a - b) for a, b in zip(acc_h, acc_s)),
        "acc": sum(acc_h) / len(acc_h),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", default=DEFAULT_DOCS, help="task=documents,... (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON file (default: results/bench/bench_mc_scoring_smollm2_cpu_<date>"
                                                ".json)")
    args = p.parse_args(argv)

    import torch
    import transformers
    from importlib.metadata import version

    from evaluation import lm_eval_bridge
    from evaluation.models import load_model
    from fair_gptq.models import resolve_model
    from fair_gptq.paths import repo_root

    torch.set_num_threads(args.threads)
    lm = load_model(resolve_model("smollm2-135m"), name="smollm2-135m", device="cpu")
    built = build_requests(parse_docs(args.docs), args.seed)
    tasks = {}
    for name, (task, instances, source) in built.items():
        hflm = score(lm_eval_bridge.wrap_model(lm, args.batch_size, "hflm"), lm.model, instances)
        wrapper = lm_eval_bridge.wrap_model(lm, args.batch_size, "shared-context")
        shared = score(wrapper, lm.model, instances)
        tasks[name] = {"data": source, **compare(task, instances, hflm, shared, wrapper.stats)}
        t = tasks[name]
        print(f"{name}: {t['docs']} docs, {t['requests']} requests; tokens {t['hflm']['tokens']} -> "
              f"{t['shared_context']['tokens']} ({t['speedup_tokens']}x); seconds {t['hflm']['seconds']:.1f} -> "
              f"{t['shared_context']['seconds']:.1f} ({t['speedup_seconds']}x); max |dLL| {t['max_abs_delta_ll']:.2e};"
              f" is_greedy identical {t['is_greedy_identical']}, acc identical {t['acc_identical']}"
              f" (max |d acc| {t['max_abs_delta_acc']:.2g})", flush=True)
    record = {
        "benchmark": "bench_mc_scoring", "date": date.today().isoformat(), "model": "smollm2-135m (float32, CPU)",
        "settings": {"docs": parse_docs(args.docs), "seed": args.seed, "batch_size": args.batch_size,
                     "threads": args.threads, "subset": "numpy default_rng(seed).choice over the task's documents"},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "lm_eval": version("lm_eval"), "python": platform.python_version()},
        "machine": {"cpu_count": __import__("os").cpu_count(), "processor": platform.processor() or platform.machine()},
        "target_speedup": 2.0, "tasks": tasks,
    }
    out = Path(args.out) if args.out else (repo_root() / "results" / "bench" /
                                            f"bench_mc_scoring_smollm2_cpu_{record['date']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"written: {out.relative_to(repo_root()) if out.is_relative_to(repo_root()) else out.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
