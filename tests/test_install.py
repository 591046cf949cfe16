"""A plain, non-editable install works without the checkout (slow: builds and installs)."""

import os
import shutil
import site
import subprocess
import sysconfig
import venv
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fresh_install(tmp_path_factory):
    """A new virtual environment with hf_ext installed from a copy of the checkout.

    The dependencies are taken from the running environment (a .pth file points at its
    site-packages) so the test needs no download beyond the build backend (setuptools, from the package index); hf_ext itself
    is installed into the new environment, which takes precedence.
    """
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    shutil.copytree(
        REPO_ROOT,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "results", ".cache"),
    )
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    new_site = subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip()
    parent_paths = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    Path(new_site, "_parent_env.pth").write_text("\n".join(sorted(parent_paths)) + "\n")
    subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--quiet", str(source)],
        check=True,
        timeout=600,
    )
    shutil.rmtree(source)  # nothing may depend on the checkout
    return env_dir


def _run(env_dir, *args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PATH=f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(list(args), capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.mark.slow
def test_installed_package_imports_from_the_new_environment(fresh_install, tmp_path):
    result = _run(fresh_install, "python", "-c", "import hf_ext; print(hf_ext.__file__)", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(fresh_install))


@pytest.mark.slow
def test_installed_cli(fresh_install, tmp_path):
    for args in (["--help"], ["--version"], ["env"]):
        result = _run(fresh_install, str(fresh_install / "bin" / "hf-ext"), *args, cwd=tmp_path)
        assert result.returncode == 0, (args, result.stderr)
    assert "transformers" in result.stdout


@pytest.mark.slow
def test_installed_model_cards_are_package_data(fresh_install, tmp_path):
    code = "from hf_ext.hub import available_templates; print(' '.join(available_templates()))"
    result = _run(fresh_install, "python", "-c", code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    installed = set(result.stdout.split())
    shipped = {p.stem for p in (REPO_ROOT / "model_cards").glob("*.md")}
    assert installed == shipped


@pytest.mark.slow
def test_every_trainer_script_runs_as_an_installed_module(fresh_install, tmp_path):
    scripts = sorted(p.stem for p in (REPO_ROOT / "trainers").glob("*.py") if p.stem != "__init__")
    assert scripts, "no trainer scripts found"
    for name in scripts:
        result = _run(
            fresh_install,
            "python",
            "-m",
            "accelerate.commands.launch",  # accelerate's console script lives in the parent environment
            "--cpu",
            "--num_processes",
            "1",
            "-m",
            f"hf_ext.trainers.{name}",
            "--help",
            cwd=tmp_path,
        )
        assert result.returncode == 0, (name, result.stderr)
        assert "usage" in result.stdout.lower(), name
