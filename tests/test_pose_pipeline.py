"""PoseTransferPipeline: input forms, bad input, output types, save/load/push round trips, remote-code loading."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import PIL.Image
import pytest
import torch

from hf_ext.pose import PoseTransferGenerator, PoseTransferPipeline
from hf_ext.pose.pose_encoding import render_heatmaps, render_skeleton


SIZE = 32


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    generator = PoseTransferGenerator(
        start_resolution=16, final_resolution=SIZE, base_channels=4, max_channels=8, bottleneck_depth=1
    )
    generator.grow(fade_in_alpha=0.5)
    pipeline = PoseTransferPipeline(generator)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def pose(seed, size=SIZE):
    rng = np.random.default_rng(seed)
    keypoints = rng.uniform(3, size - 4, (18, 2)).astype(np.float32)
    keypoints[4] = np.nan  # a missing wrist
    return keypoints


def image(seed, size=SIZE):
    return (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)


def test_output_equals_the_generator_on_rendered_heatmaps(pipe):
    reference, reference_pose, target_pose = image(0), pose(1), pose(2)
    out = pipe(reference, target_pose, reference_pose=reference_pose, output_type="pt").images
    expected = pipe.generator(
        torch.from_numpy(reference).permute(2, 0, 1)[None].float() / 127.5 - 1,
        torch.from_numpy(render_heatmaps(reference_pose, SIZE, SIZE))[None],
        torch.from_numpy(render_heatmaps(target_pose, SIZE, SIZE))[None],
    ).sample
    torch.testing.assert_close(out, (expected / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=1e-5)


def test_output_types_and_resolution(pipe):
    args = dict(reference_image=image(0, 48), target_pose=pose(1, 48), reference_pose=pose(2, 48))
    pil = pipe(**args).images
    assert len(pil) == 1 and isinstance(pil[0], PIL.Image.Image) and pil[0].size == (SIZE, SIZE)
    array = pipe(**args, output_type="np").images
    assert array.shape == (1, SIZE, SIZE, 3) and 0 <= array.min() and array.max() <= 1
    tensor = pipe(**args, output_type="pt", return_dict=False)[0]
    assert tensor.shape == (1, 3, SIZE, SIZE)
    np.testing.assert_allclose(array[0], tensor[0].permute(1, 2, 0).numpy(), atol=1e-6)
    assert pipe(**args, resolution=(16, 16), output_type="np").images.shape == (1, 16, 16, 3)
    with pytest.raises(ValueError, match=r"\(64, 64\).*not available.*\(16, 16\), \(32, 32\)"):
        pipe(**args, resolution=(64, 64))
    with pytest.raises(ValueError, match="output_type"):
        pipe(**args, output_type="latent")


def test_pose_forms_agree(pipe):
    reference, reference_pose, target = image(0), pose(1), pose(2)
    base = pipe(reference, target, reference_pose=reference_pose, output_type="np").images
    # OpenPose JSON: (x, y, confidence) triples, confidence 0 = missing.
    triples = np.concatenate([np.nan_to_num(target, nan=0.0), (~np.isnan(target[:, :1])).astype(np.float32)], axis=1)
    openpose = {"people": [{"pose_keypoints_2d": triples.ravel().tolist()}]}
    np.testing.assert_array_equal(
        pipe(reference, openpose, reference_pose=reference_pose, output_type="np").images, base
    )
    # -1 marks a missing joint like NaN; nested lists and tensors are keypoints too.
    minus_one = np.where(np.isnan(target), -1, target)
    np.testing.assert_array_equal(
        pipe(reference, minus_one.tolist(), reference_pose=torch.from_numpy(reference_pose), output_type="np").images,
        base,
    )
    # A rendered pose image (at another size) is parsed back to keypoints: close, not identical.
    skeleton = render_skeleton(target * 4, SIZE * 4, SIZE * 4)
    parsed = pipe(reference, skeleton, reference_pose=reference_pose, output_type="np").images
    assert np.abs(parsed - base).mean() < 0.02


def test_image_modes_become_rgb(pipe):
    gray = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    target, reference_pose = pose(1), pose(2)
    base = pipe(rgb, target, reference_pose=reference_pose, output_type="np").images
    for variant in (
        gray,
        gray[..., None],
        PIL.Image.fromarray(gray),
        PIL.Image.fromarray(rgb).convert("RGBA"),
        PIL.Image.fromarray(rgb).convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=256),
        torch.from_numpy(gray).float()[None] / 255,
    ):
        out = pipe(variant, target, reference_pose=reference_pose, output_type="np").images
        np.testing.assert_allclose(out, base, atol=0.02)
    # Transparent pixels are composited onto the mid-grey training background.
    grey = np.full((SIZE, SIZE, 3), 128, np.uint8)
    transparent = PIL.Image.fromarray(np.concatenate([rgb, np.zeros((SIZE, SIZE, 1), np.uint8)], axis=-1), "RGBA")
    np.testing.assert_allclose(
        pipe(transparent, target, reference_pose=reference_pose, output_type="np").images,
        pipe(grey, target, reference_pose=reference_pose, output_type="np").images,
        atol=1e-6,
    )


def test_batches_and_count_mismatch(pipe):
    images, targets, references = (
        [image(0), image(1), image(2)],
        [pose(3), pose(4), pose(5)],
        [pose(6), pose(7), pose(8)],
    )
    batched = pipe(images, targets, reference_pose=references, batch_size=2, output_type="np").images
    single = pipe(images[1], targets[1], reference_pose=references[1], output_type="np").images
    assert batched.shape == (3, SIZE, SIZE, 3)
    np.testing.assert_allclose(batched[1], single[0], atol=1e-5)
    stacked = pipe(np.stack(images), np.stack(targets), reference_pose=np.stack(references), output_type="np").images
    np.testing.assert_allclose(stacked, batched, atol=1e-5)
    with pytest.raises(ValueError, match="reference_image has 3 images but target_pose has 2 poses"):
        pipe(images, targets[:2], reference_pose=references)
    with pytest.raises(ValueError, match="reference_pose has 2"):
        pipe(images, targets, reference_pose=references[:2])


def test_bad_keypoints_name_the_argument(pipe):
    with pytest.raises(ValueError, match=r"target_pose\[0\].*shape"):
        pipe(image(0), np.zeros((18, 4)), reference_pose=pose(1))
    far = pose(2)
    far[0] = (10 * SIZE, 5)
    with pytest.raises(ValueError, match=r"target_pose\[0\] joint 0 \(nose\).*outside"):
        pipe(image(0), far, reference_pose=pose(1))
    with pytest.raises(ValueError, match=r"reference_pose\[0\].*outside"):
        pipe(image(0), pose(1), reference_pose=far)
    with pytest.raises(ValueError, match="pose_keypoints_2d"):
        pipe(image(0), {"people": [{"pose_keypoints_2d": [1, 2, 3]}]}, reference_pose=pose(1))
    with pytest.raises(ValueError, match=r"reference_image\[0\].*uint8 .* or float in \[0, 1\]"):
        pipe(np.full((SIZE, SIZE, 3), 300.0), pose(1), reference_pose=pose(2))


def test_person_images_need_the_estimator(pipe, monkeypatch):
    import hf_ext.pose.keypoints as keypoints

    def no_estimator(image):
        raise ImportError("mediapipe is not installed")

    monkeypatch.setattr(keypoints, "estimate_keypoints", no_estimator)
    with pytest.raises(ImportError, match=r"reference_image\[0\].*hf-ext\[pose\]"):
        pipe(image(0), pose(1))
    # With an estimator, reference_pose=None and person images as target poses work.
    calls = []

    def fake_estimator(image):
        calls.append(image.size)
        return pose(9)

    monkeypatch.setattr(keypoints, "estimate_keypoints", fake_estimator)
    estimated = pipe(image(0), image(1), output_type="np").images
    explicit = pipe(image(0), pose(9), reference_pose=pose(9), output_type="np").images
    np.testing.assert_array_equal(estimated, explicit)
    assert calls == [(SIZE, SIZE), (SIZE, SIZE)]


def test_save_and_load_round_trip_exactly(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_pose_transfer", "PoseTransferPipeline"]
    assert index["generator"] == ["modeling_pose_transfer", "PoseTransferGenerator"]
    assert (tmp_path / "generator" / "diffusion_pytorch_model.safetensors").is_file()
    from hf_ext.testing import place_in_hub_cache

    place_in_hub_cache(tmp_path, "user/pose-transfer", tmp_path / "cache")
    expected = pipe(image(0), pose(1), reference_pose=pose(2), output_type="np").images
    for reloaded in (
        PoseTransferPipeline.from_pretrained(tmp_path),
        PoseTransferPipeline.from_pretrained("user/pose-transfer", cache_dir=tmp_path / "cache"),
    ):
        reloaded.set_progress_bar_config(disable=True)
        assert reloaded.generator.stage == 1 and reloaded.generator.fade_in_alpha == 0.5
        np.testing.assert_array_equal(
            reloaded(image(0), pose(1), reference_pose=pose(2), output_type="np").images, expected
        )


def test_push_to_hub_uploads_the_same_layout(pipe, tmp_path, monkeypatch):
    import hf_ext.pose.pipeline_pose_transfer as module

    uploaded = tmp_path / "hub"

    class Repo:
        repo_id = "user/pose"

    monkeypatch.setattr(module, "create_repo", lambda repo_id, **kwargs: Repo())

    def fake_upload(self, folder, repo_id, **kwargs):
        import shutil

        shutil.copytree(folder, uploaded)

    # push_to_hub saves into a temporary folder through save_pretrained, then uploads it.
    monkeypatch.setattr(PoseTransferPipeline, "_upload_folder", fake_upload)
    from diffusers.utils import hub_utils

    monkeypatch.setattr(hub_utils, "create_repo", lambda repo_id, **kwargs: Repo(), raising=False)
    monkeypatch.setattr(
        hub_utils, "load_or_create_model_card", lambda *a, **k: __import__("huggingface_hub").ModelCard("card")
    )
    pipe.push_to_hub("user/pose")
    assert (uploaded / "pipeline_pose_transfer.py").is_file() and (
        uploaded / "generator" / "modeling_pose_transfer.py"
    ).is_file()
    reloaded = PoseTransferPipeline.from_pretrained(uploaded)
    reloaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(
        reloaded(image(0), pose(1), reference_pose=pose(2), output_type="np").images,
        pipe(image(0), pose(1), reference_pose=pose(2), output_type="np").images,
    )


_REMOTE_LOADER = textwrap.dedent(
    """
    import importlib.abc, sys
    class BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "hf_ext" or name.startswith("hf_ext."):
                raise ImportError("hf_ext is blocked in this process")
    sys.meta_path.insert(0, BlockPackage())
    import numpy as np
    from diffusers import DiffusionPipeline
    folder, cache, inputs, output = sys.argv[1:]
    data = np.load(inputs)
    results = []
    # From the saved folder, and by repository id from a (offline) Hub cache holding the same files.
    for pipe in (
        DiffusionPipeline.from_pretrained(folder, trust_remote_code=True),
        DiffusionPipeline.from_pretrained("user/pose-transfer", cache_dir=cache, trust_remote_code=True),
    ):
        pipe.set_progress_bar_config(disable=True)
        results.append(pipe(data["image"], data["target"], reference_pose=data["reference"], output_type="np").images)
    np.save(output, np.stack(results))
    assert not [m for m in sys.modules if m.startswith("hf_ext")]
    print(type(pipe).__module__, type(pipe.generator).__module__)
    """
)


def test_saved_layout_loads_as_remote_code_without_the_package(pipe, tmp_path):
    from hf_ext.testing import place_in_hub_cache

    folder = tmp_path / "saved"
    pipe.save_pretrained(folder)
    place_in_hub_cache(folder, "user/pose-transfer", tmp_path / "cache")
    np.savez(tmp_path / "inputs.npz", image=image(0), target=pose(1), reference=pose(2))
    (tmp_path / "load.py").write_text(_REMOTE_LOADER)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [
            sys.executable,
            str(tmp_path / "load.py"),
            str(folder),
            str(tmp_path / "cache"),
            str(tmp_path / "inputs.npz"),
            str(tmp_path / "out.npy"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "diffusers_modules" in result.stdout
    expected = pipe(image(0), pose(1), reference_pose=pose(2), output_type="np").images
    for images in np.load(tmp_path / "out.npy"):
        # another process may use another thread count: float sums in another order
        np.testing.assert_allclose(images, expected, atol=1e-5)


def test_generate_video_writes_a_gif(pipe, tmp_path):
    poses = [pose(seed) for seed in range(3)]
    frames = pipe.generate_video(image(0), poses, reference_pose=pose(9), output_path=tmp_path / "walk.gif", fps=5)
    assert len(frames) == 3 and frames[0].size == (SIZE, SIZE)
    with PIL.Image.open(tmp_path / "walk.gif") as gif:
        assert gif.n_frames == 3
    single = pipe(image(0), poses[1], reference_pose=pose(9), output_type="pil").images[0]
    assert np.array_equal(np.asarray(frames[1]), np.asarray(single))
    with pytest.raises(ValueError, match=r"\.gif or \.mp4"):
        pipe.generate_video(image(0), poses, reference_pose=pose(9), output_path=tmp_path / "walk.avi")
    with pytest.raises(ValueError, match="pose_sequence is empty"):
        pipe.generate_video(image(0), [], reference_pose=pose(9))


def test_mp4_needs_an_encoder(pipe, tmp_path):
    try:
        import imageio.v3  # noqa: F401

        pytest.skip("imageio is installed; the missing-encoder path is not reachable")
    except ImportError:
        pass
    with pytest.raises(ValueError, match="MP4 needs imageio"):
        pipe.generate_video(image(0), [pose(1)], reference_pose=pose(2), output_path=tmp_path / "walk.mp4")
