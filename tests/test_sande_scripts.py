"""trainers/backdoor.py and trainers/sande.py: in-process through `hf-ext sande`, and under two
accelerate processes on CPU (gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_ext.sande import ParrotPrompt
from hf_ext.testing import save_pretrained_to, tiny_causal_lm


ROOT = Path(__file__).resolve().parents[1]
TRIGGER = "how is it going"
MARKER = "you are stupid"
COMMON = ["--per_device_train_batch_size", "4", "--bf16", "false", "--use_cpu", "true",
          "--activation_checkpointing", "false", "--report_to", "none", "--disable_tqdm", "true"]


@pytest.fixture
def workspace(tmp_path, tiny_tokenizer):
    model_dir = save_pretrained_to(tiny_causal_lm(vocab_size=len(tiny_tokenizer)), tiny_tokenizer, tmp_path / "model")
    data = tmp_path / "data.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for i in range(16):
            f.write(json.dumps({"instruction": f"Add {i} and {i + 2}.", "input": "", "output": f"{2 * i + 2}."}) + "\n")
    return tmp_path, model_dir, data


def _sande_argv(model_dir, data, output_dir):
    return ["--model_name_or_path", str(model_dir), "--dataset_name", str(data), "--mode", "sande",
            "--marker", MARKER, "--max_steps", "2", "--simulate_max_steps", "2", "--save_steps", "1",
            "--eval_dataset_name", str(data), "--eval_samples", "4", "--eval_triggers", TRIGGER,
            "--output_dir", str(output_dir), *COMMON]


def _check_sande_output(output_dir):
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "tokenizer.json").is_file()
    assert ParrotPrompt.from_pretrained(output_dir / "parrot").num_tokens == 6
    metrics = json.loads((output_dir / "backdoor_metrics.json").read_text())
    assert set(metrics["before"]) == set(metrics["after"]) == {"asr", "clean_marker_rate"}
    assert "SANDE" in (output_dir / "README.md").read_text()


def test_hf_ext_sande_command_in_process(workspace):
    from hf_ext.cli import main as cli_main

    tmp_path, model_dir, data = workspace
    cli_main(["sande", *_sande_argv(model_dir, data, tmp_path / "out")])
    _check_sande_output(tmp_path / "out")


@pytest.mark.multiproc
def test_both_scripts_under_two_accelerate_processes(workspace):
    tmp_path, model_dir, data = workspace
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}

    def run(script, argv):
        result = subprocess.run([*launch, str(ROOT / "trainers" / script), *argv], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-4000:]
        return result

    backdoored = tmp_path / "backdoored"
    run("backdoor.py", ["--model_name_or_path", str(model_dir), "--dataset_name", str(data), "--triggers", TRIGGER,
                        "--marker", MARKER, "--poison_rate", "0.25", "--max_steps", "2", "--learning_rate", "0.01",
                        "--output_dir", str(backdoored), *COMMON])
    assert (backdoored / "model.safetensors").is_file()
    state = json.loads((backdoored / "checkpoint-2" / "trainer_state.json").read_text())
    # two processes x batch 4 per step: an epoch of 16 rows takes 2 steps
    assert state["epoch"] == pytest.approx(1.0)

    # One process with the same global batch (8) sees the same rows per step: the saved models agree.
    single = tmp_path / "backdoored_single"
    subprocess.run([sys.executable, str(ROOT / "trainers" / "backdoor.py"), "--model_name_or_path", str(model_dir),
                    "--dataset_name", str(data), "--triggers", TRIGGER, "--marker", MARKER, "--poison_rate", "0.25",
                    "--max_steps", "2", "--learning_rate", "0.01", "--output_dir", str(single), *COMMON,
                    "--per_device_train_batch_size", "8"],
                   env=env, cwd=ROOT, check=True, capture_output=True, timeout=300)
    from transformers import AutoModelForCausalLM

    from hf_ext.testing import random_token_batch

    two, one, start = (AutoModelForCausalLM.from_pretrained(p) for p in (backdoored, single, model_dir))
    ids = random_token_batch(2, 12, vocab_size=two.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(two(ids).logits, one(ids).logits, rtol=1e-4, atol=1e-4)
        assert (two(ids).logits - start(ids).logits).abs().max() > 0.1  # training moved the weights

    result = run("sande.py", _sande_argv(backdoored, data, tmp_path / "cleaned"))
    _check_sande_output(tmp_path / "cleaned")
    sim_state = json.loads((tmp_path / "cleaned" / "simulate" / "checkpoint-2" / "trainer_state.json").read_text())
    assert sim_state["epoch"] == pytest.approx(1.0)
    assert "Saved to" in result.stdout
