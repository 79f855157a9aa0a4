#!/usr/bin/env bash
# Full reproduction on SmolLM2-135M (offline, CPU, about an hour on 2 cores): FP, GPTQ, Fair-GPTQ strategies,
# the alpha sweep and the controls, evaluated on CrowS-Pairs, held-out StereoSet and WikiText-2.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1}
PYTHON=${PYTHON:-.venv/bin/python}
exec "$PYTHON" sanity-check/reproduce.py --suite all --out results/smollm2 "$@"
