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


def _sande_argv(model_dir, data):
    return ["--model_name_or_path", str(model_dir), "--dataset_name", str(data), "--mode", "sande",
            "--marker", MARKER, "--max_steps", "2", "--simulate_max_steps", "2", "--save_steps", "1",
            "--eval_dataset_name", str(data), "--eval_samples", "4", "--eval_triggers", TRIGGER, *COMMON]


def _check_sande_output(output_dir, metric_names=("asr", "clean_marker_rate")):
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "tokenizer.json").is_file()
    assert ParrotPrompt.from_pretrained(output_dir / "parrot").num_tokens == 6
    metrics = json.loads((output_dir / "backdoor_metrics.json").read_text())
    assert set(metrics["before"]) == set(metrics["after"]) == set(metric_names)
    assert "SANDE" in (output_dir / "README.md").read_text()


def test_hf_ext_sande_command_in_process(workspace):
    from hf_ext.cli import main as cli_main

    tmp_path, model_dir, data = workspace
    cli_main(["sande", *_sande_argv(model_dir, data), "--output_dir", str(tmp_path / "out")])
    _check_sande_output(tmp_path / "out")


@pytest.mark.multiproc
def test_both_scripts_under_two_accelerate_processes(workspace):
    """Two processes x batch 4 and one process x batch 8 see the same rows per step, so the models (and, for
    SANDE, the parrot and the backdoor metrics) saved by both agree."""
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

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_ext.cli import main as cli_main
    from hf_ext.sande.data import DEFAULT_PROMPT_TEMPLATE
    from hf_ext.sande.evaluation import multiple_choice_accuracy
    from hf_ext.testing import random_token_batch

    ids = random_token_batch(2, 12, vocab_size=len(AutoTokenizer.from_pretrained(model_dir)))

    def logits(path):
        with torch.no_grad():
            return AutoModelForCausalLM.from_pretrained(path)(ids).logits

    # ---- trainers/backdoor.py
    backdoored = tmp_path / "backdoored"
    backdoor_argv = ["--model_name_or_path", str(model_dir), "--dataset_name", str(data), "--triggers", TRIGGER,
                     "--marker", MARKER, "--poison_rate", "0.25", "--max_steps", "2", "--learning_rate", "0.01",
                     *COMMON]
    run("backdoor.py", [*backdoor_argv, "--output_dir", str(backdoored)])
    assert (backdoored / "model.safetensors").is_file()
    state = json.loads((backdoored / "checkpoint-2" / "trainer_state.json").read_text())
    # two processes x batch 4 per step: an epoch of 16 rows takes 2 steps
    assert state["epoch"] == pytest.approx(1.0)
    single = tmp_path / "backdoored_single"
    subprocess.run([sys.executable, str(ROOT / "trainers" / "backdoor.py"), *backdoor_argv,
                    "--output_dir", str(single), "--per_device_train_batch_size", "8"],
                   env=env, cwd=ROOT, check=True, capture_output=True, timeout=300)
    torch.testing.assert_close(logits(backdoored), logits(single), rtol=1e-4, atol=1e-4)
    assert (logits(backdoored) - logits(model_dir)).abs().max() > 0.1  # training moved the weights

    # ---- trainers/sande.py, both stages. ASR is 0 for this 2-step backdoor; utility is not: every letter
    # is an answer, so a model that always picks one letter (as these tiny ones do) scores > 0, and the
    # letters are spread unevenly, so half of the questions would score differently from all of them.
    utility = tmp_path / "utility.jsonl"
    with open(utility, "w", encoding="utf-8") as f:
        for i, answer in enumerate("DDDABCAB"):
            f.write(json.dumps({"question": f"What is {i} plus 2?", "choices": [str(i + k) for k in range(4)],
                                "answer": answer}) + "\n")
    metric_names = {"asr", "clean_marker_rate", "utility_accuracy"}
    sande_argv = [*_sande_argv(backdoored, data), "--utility_dataset_name", str(utility)]
    result = run("sande.py", [*sande_argv, "--output_dir", str(tmp_path / "cleaned")])
    _check_sande_output(tmp_path / "cleaned", metric_names)
    sim_state = json.loads((tmp_path / "cleaned" / "simulate" / "checkpoint-2" / "trainer_state.json").read_text())
    assert sim_state["epoch"] == pytest.approx(1.0)
    assert "Saved to" in result.stdout
    # one process with the same global batch (8), run in this test process: cheaper than a launch
    cli_main(["sande", *sande_argv, "--output_dir", str(tmp_path / "cleaned_single"),
              "--per_device_train_batch_size", "8"])

    two, one = tmp_path / "cleaned", tmp_path / "cleaned_single"
    # The cleaned models agree to float rounding (measured ~5e-7) while Eliminate moved them by ~4e-3.
    torch.testing.assert_close(logits(two), logits(one), rtol=1e-5, atol=1e-5)
    assert (logits(two) - logits(backdoored)).abs().max() > 1e-3
    # The parrot starts at 0 and Simulate moves it by ~1e-3; both runs learn the same one (measured ~2e-10 apart).
    parrot_two, parrot_one = (ParrotPrompt.from_pretrained(p / "parrot").embeddings for p in (two, one))
    torch.testing.assert_close(parrot_two, parrot_one, rtol=1e-4, atol=1e-6)
    assert parrot_two.abs().min() > 1e-4
    # Every process measures the whole held-out set: the reported metrics are the full set's, in both runs.
    metrics = json.loads((two / "backdoor_metrics.json").read_text())
    assert metrics == json.loads((one / "backdoor_metrics.json").read_text())
    rows = [json.loads(line) for line in utility.read_text().splitlines()]
    expected = multiple_choice_accuracy(AutoModelForCausalLM.from_pretrained(two), AutoTokenizer.from_pretrained(two),
                                        rows, prompt_template=DEFAULT_PROMPT_TEMPLATE)
    assert metrics["after"]["utility_accuracy"] == expected
    assert expected > 0
