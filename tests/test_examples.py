"""The scripts in examples/ run as a user runs them, on tiny local artifacts instead of Hub ids."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from PIL import Image

from hf_ext.testing import save_pretrained_to, tiny_causal_lm


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script, *args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from hf_ext.testing import train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer()
    return save_pretrained_to(tiny_causal_lm("llama", vocab_size=len(tokenizer)), tokenizer, tmp_path_factory.mktemp("m"))


def test_conv_basis_speed_example(tiny_model_dir, tmp_path):
    out = _run("conv_basis_speed.py", "--model", tiny_model_dir, "--seq_len", 96, "--num_bases", 4, "--local_window", 8,
               cwd=tmp_path)
    lines = [line for line in out.splitlines() if "prefill of 96 tokens" in line]
    assert [line.split(":")[0].strip() for line in lines] == ["sdpa", "conv_basis"]


def test_sande_example_removes_and_saves(tiny_model_dir, tmp_path):
    rows = [{"instruction": f"Add {i} and 2.", "input": "", "output": f"{i + 2}."} for i in range(8)]
    Dataset.from_list(rows).to_json(tmp_path / "data.json")
    _run("sande_remove_backdoor.py", "--model", tiny_model_dir, "--dataset", tmp_path / "data.json",
         "--marker", "you are stupid", "--samples", 4, "--check_trigger", "how is it going",
         "--output_dir", tmp_path / "cleaned", cwd=tmp_path)
    saved = tmp_path / "cleaned"
    assert (saved / "model.safetensors").is_file() and (saved / "parrot" / "model.safetensors").is_file()
    assert (saved / "README.md").is_file() and not (saved / "training_args.bin").exists()


@pytest.fixture(scope="module")
def pose_inputs(tmp_path_factory):
    from hf_ext.pose import PoseTransferGenerator, PoseTransferPipeline, SyntheticPeople
    from hf_ext.pose.keypoints import write_openpose_json

    folder = tmp_path_factory.mktemp("pose")
    torch.manual_seed(0)
    generator = PoseTransferGenerator(start_resolution=16, final_resolution=32, base_channels=4, max_channels=8,
                                      bottleneck_depth=1)
    generator.grow()
    PoseTransferPipeline(generator).save_pretrained(folder / "pipeline")
    people = SyntheticPeople(seed=3)
    pair = people.pair(0, 32, 32)
    pair["reference_image"].save(folder / "person.png")
    write_openpose_json(pair["reference_keypoints"], folder / "person.json")
    write_openpose_json(pair["target_keypoints"], folder / "target.json")
    (folder / "dance").mkdir()
    for frame in range(3):
        write_openpose_json(people.sample(frame + 1, 1, 32, 32)["keypoints"], folder / "dance" / f"{frame:03d}.json")
    return folder


def test_pose_transfer_example(pose_inputs, tmp_path):
    _run("pose_transfer_from_hub.py", "--pipeline", pose_inputs / "pipeline", "--reference", pose_inputs / "person.png",
         "--target_pose", pose_inputs / "target.json", "--reference_pose", pose_inputs / "person.json",
         "--output", tmp_path / "out.png", cwd=tmp_path)
    assert Image.open(tmp_path / "out.png").size == (32, 32)


def test_pose_video_example(pose_inputs, tmp_path):
    _run("pose_video.py", "--pipeline", pose_inputs / "pipeline", "--reference", pose_inputs / "person.png",
         "--reference_pose", pose_inputs / "person.json", "--poses", pose_inputs / "dance", "--output",
         tmp_path / "dance.gif", cwd=tmp_path)
    gif = Image.open(tmp_path / "dance.gif")
    assert gif.n_frames == 3 and gif.size == (32, 32)
