"""tests/conftest.py stops the session when the installed overlay is not the repository's gptq.py/config.py."""
import os
import subprocess
import sys

import pytest

from overlay_files import OVERLAY_FILES, REPO_DIR, overlay_differences


def fake_installation(root, changed=None, missing=None):
    """A gptqmodel package whose quantization/ holds copies of the overlay files, `changed` edited, `missing` absent."""
    quantization = root / "gptqmodel" / "quantization"
    quantization.mkdir(parents=True)
    (root / "gptqmodel" / "__init__.py").write_text("")
    (root / "gptqmodel" / "version.py").write_text('__version__ = "2.2.0"\n')
    for name in OVERLAY_FILES:
        if name == missing:
            continue
        text = (REPO_DIR / name).read_text()
        (quantization / name).write_text(text + "# edited\n" if name == changed else text)
    return quantization


def test_identical_copies_pass(tmp_path):
    assert overlay_differences(REPO_DIR, fake_installation(tmp_path)) == []


def test_edited_and_missing_files_are_named(tmp_path):
    edited = fake_installation(tmp_path / "a", changed="gptq.py")
    assert overlay_differences(REPO_DIR, edited) == [f"{edited / 'gptq.py'} differs from {REPO_DIR / 'gptq.py'}"]
    missing = fake_installation(tmp_path / "b", missing="config.py")
    assert overlay_differences(REPO_DIR, missing) == [f"{missing / 'config.py'} is missing"]


@pytest.mark.parametrize("with_version_file", [True, False])
def test_session_stops_at_start_with_the_fix(tmp_path, with_version_file):
    """A pytest run that imports a stale gptqmodel (first on PYTHONPATH) exits before running any test."""
    fake_installation(tmp_path, changed="config.py")
    if not with_version_file:
        (tmp_path / "gptqmodel" / "version.py").unlink()
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"{REPO_DIR / 'tests' / 'test_overlay_check.py'}::test_identical_copies_pass"],
                          cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 4, output
    assert "config.py differs" in output and "bash install_overlay.sh" in output
    assert "passed" not in output
