"""The package imports lazily, offline, and its command line works."""

import subprocess
import sys

import pytest

import hf_ext
from hf_ext import cli


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_import_is_lazy_and_pulls_no_optional_dependency():
    # Heavy or optional libraries load only when a name that needs them is used.
    code = (
        "import sys, hf_ext\n"
        "heavy = [m for m in ('trl', 'diffusers', 'datasets', 'peft', 'evaluate', 'mediapipe', 'imageio', 'matplotlib')"
        " if m in sys.modules]\n"
        "print(heavy)\n"
    )
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_import_does_not_touch_the_network():
    code = (
        "import socket\n"
        "def refuse(*args, **kwargs):\n"
        "    raise AssertionError('network access during import')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "socket.getaddrinfo = refuse\n"
        "import hf_ext\n"
        "print(sorted(hf_ext.__all__)[:1])\n"
    )
    result = _run_python(code)
    assert result.returncode == 0, result.stderr


def test_lazy_names_resolve_and_unknown_names_raise():
    for name in hf_ext._LAZY_IMPORTS:
        assert getattr(hf_ext, name) is not None
    assert set(hf_ext._LAZY_IMPORTS) <= set(dir(hf_ext))
    with pytest.raises(AttributeError, match="no_such_name"):
        hf_ext.no_such_name


def test_cli_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"hf-ext {hf_ext.__version__}"

    with pytest.raises(SystemExit):
        cli.main(["--help"])
    help_text = capsys.readouterr().out
    for command in ("env", "demo", "sande", "pose", "conv-basis-report", "bench"):
        assert command in help_text


def test_cli_env_reports_versions_and_registration(capsys):
    import torch
    import transformers

    assert cli.main(["env"]) == 0
    lines = dict(line[2:].split(": ", 1) for line in capsys.readouterr().out.splitlines() if line.startswith("- "))
    assert lines["torch"] == torch.__version__
    assert lines["transformers"] == transformers.__version__
    assert lines["hf_ext"] == hf_ext.__version__
    from transformers import AttentionInterface

    assert lines["conv_basis attention registered"] == str("conv_basis" in AttentionInterface())


def test_cli_forwards_arguments_to_the_named_module(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "sande", "--help"])
    assert exit_info.value.code == 0
    assert "--removal_steps" in capsys.readouterr().out  # the benchmark's own help
    with pytest.raises(SystemExit):
        cli.main(["bench", "nope"])
    assert "invalid choice" in capsys.readouterr().err


def test_cli_rejects_unknown_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["no-such-command"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_console_script_is_installed():
    result = subprocess.run(["hf-ext", "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"hf-ext {hf_ext.__version__}"


def test_trainers_and_model_cards_resolve_inside_the_package():
    from importlib import resources

    import hf_ext.model_cards
    import hf_ext.trainers

    templates = sorted(p.name for p in resources.files("hf_ext.model_cards").iterdir() if p.name.endswith(".md"))
    assert "sande.md" in templates and "conv_basis.md" in templates
    assert hf_ext.trainers.__doc__
