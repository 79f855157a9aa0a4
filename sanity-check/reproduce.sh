#!/usr/bin/env bash
# The controlled study on SmolLM2-135M (offline, CPU; hours on 2 cores, resumable): FP, plain GPTQ, degradation
# references and four calibration-mode curves over alpha, evaluated on full CrowS-Pairs, held-out StereoSet and
# 16 WikiText-2 windows. Finished jobs (results/smollm2/study/runs/<variant>/) are skipped on a rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1}
PYTHON=${PYTHON:-.venv/bin/python}
exec "$PYTHON" sanity-check/reproduce.py --suite study --out results/smollm2/study "$@"
