"""The pose-transfer benchmark end to end at toy size: files, schema, baselines, speed arithmetic."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from hf_ext.benchmarks import pose_transfer as bench
from hf_ext.metrics.image_quality import psnr, ssim
from hf_ext.pose.synthetic import synthetic_pair_dataset


# A small UNet2DConditionModel stands in for SD-1.5's, which takes 3.4 GB and seconds per step.
_TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)


def test_benchmark_writes_results(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "SD15_UNET_CONFIG", _TINY_UNET)
    argv = [
        "--output-dir", str(tmp_path), "--seeds", "0", "1", "--train_seconds", "1",
        "--resolution", "32", "32", "--start_resolution", "16", "16", "--num_train_pairs", "8",
        "--num_eval_pairs", "4", "--batch_size", "4", "--max_channels", "32",
        "--speed_resolutions", "64", "--speed_repeats", "1", "--diffusion_resolutions", "64",
    ]
    assert bench.main(argv) == 0

    result = json.loads((tmp_path / "pose_transfer.json").read_text())
    assert set(result["quality"]) == {"copy_reference", "background", "progressive_local", "progressive_no_local", "direct_local"}
    for scores in result["quality"].values():
        assert set(scores) == {"ssim", "psnr", "local_ssim", "person_ssim"}
        assert all(np.isfinite(list(scores.values())))
    assert len(result["runs"]) == 6 and {run["seed"] for run in result["runs"]} == {0, 1}
    assert all(run["images_seen"] >= 4 for run in result["runs"])

    # The copy-the-reference baseline, recomputed from the same held-out pairs.
    held_out = synthetic_pair_dataset(4, 32, 32, seed=result["arguments"]["eval_seed"])
    references = [Image.open(io.BytesIO(row["reference_image"]["bytes"])) for row in held_out]
    targets = [Image.open(io.BytesIO(row["target_image"]["bytes"])) for row in held_out]
    expected_ssim = float(ssim(references, targets).mean())
    assert result["quality"]["copy_reference"]["ssim"] == pytest.approx(expected_ssim, abs=1e-6)
    assert result["quality"]["copy_reference"]["psnr"] == pytest.approx(float(psnr(references, targets).mean()), abs=1e-4)

    speed = result["speed"]["64x64"]
    assert speed["diffusion_seconds_per_image"] == pytest.approx(50 * speed["diffusion_step_seconds"])
    assert speed["ratio"] == pytest.approx(speed["diffusion_seconds_per_image"] / speed["ours_seconds_per_image"])
    assert speed["ours_images_per_second"] == pytest.approx(1 / speed["ours_seconds_per_image"])
    assert speed["peak_mem_mb"] >= speed["before_forward_mb"] > 0

    markdown = (tmp_path / "pose_transfer.md").read_text()
    assert "50 x the measured time of one denoising step" in markdown and "load average" in markdown
    grid = Image.open(tmp_path / "pose_transfer_samples.png")
    # reference, pose, copy, 3 variants, ground truth; 4 rows; 32-pixel tiles enlarged 4x
    assert grid.size == (32 * 7 * 4, 32 * 4 * 4)


def test_benchmark_rejects_bad_arguments():
    with pytest.raises(ValueError, match="diffusion_resolutions"):
        bench.main(["--speed_resolutions", "256", "--diffusion_resolutions", "512"])
    with pytest.raises(ValueError, match="eval_seed must differ from 0"):
        bench.main(["--eval_seed", "0"])
