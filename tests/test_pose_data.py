"""Synthetic people, pair datasets (PATN layout, generic lists) and the batch collator."""

import numpy as np
import pytest
import torch
from PIL import Image

from hf_ext.pose.data import PosePairCollator, load_image, load_patn_pairs, pair_dataset
from hf_ext.pose.keypoints import write_openpose_json, write_patn_annotations, write_patn_pairs
from hf_ext.pose.pose_encoding import rescale_keypoints
from hf_ext.pose.synthetic import BACKGROUND_COLOR, SyntheticPeople, synthetic_pair_dataset


def _pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_synthetic_is_deterministic_and_seed_dependent():
    a, b = SyntheticPeople(seed=3).pair(5, 64, 48), SyntheticPeople(seed=3).pair(5, 64, 48)
    for key in ("reference_image", "target_image"):
        np.testing.assert_array_equal(_pixels(a[key]), _pixels(b[key]))
    np.testing.assert_array_equal(a["target_keypoints"], b["target_keypoints"])
    other = SyntheticPeople(seed=4).pair(5, 64, 48)
    assert np.abs(other["reference_keypoints"] - a["reference_keypoints"]).max() > 1
    # Two poses of one person really differ.
    assert np.abs(a["reference_keypoints"] - a["target_keypoints"]).max() > 2


def test_synthetic_pair_is_one_person_in_two_poses():
    people = SyntheticPeople(seed=0)
    index = next(i for i in range(50) if people.appearance(i).pattern == "solid")
    pair = people.pair(index, 128, 88)
    shirt = people.appearance(index).shirt
    for side in ("reference", "target"):
        image, mask, keypoints = _pixels(pair[f"{side}_image"]), pair[f"{side}_mask"], pair[f"{side}_keypoints"]
        assert image.shape == (128, 88, 3) and mask.shape == (128, 88) and mask.dtype == bool
        # Plain background outside the person, every body joint on the person.
        assert (np.abs(image[~mask] - BACKGROUND_COLOR).max(axis=1) <= 40).mean() > 0.99
        assert 0.05 < mask.mean() < 0.5
        x, y = np.round(keypoints[:14]).astype(int).T
        assert mask[y, x].all()
        # The middle of the torso (unshaded) has the shirt's colour in both poses.
        x0, y0 = np.round((2 * keypoints[1] + keypoints[8] + keypoints[11]) / 4).astype(int)
        assert np.abs(image[y0, x0] - shirt).max() <= 2


@pytest.mark.parametrize("height, width", [(1024, 704), (40, 40)])
def test_synthetic_any_resolution(height, width):
    pair = SyntheticPeople(seed=1).pair(0, height, width)
    assert pair["reference_image"].size == (width, height)
    keypoints = pair["target_keypoints"]
    assert (keypoints[:, 0] >= 0).all() and (keypoints[:, 0] < width).all()
    assert (keypoints[:, 1] >= 0).all() and (keypoints[:, 1] < height).all()


def test_synthetic_rejects_bad_sizes():
    with pytest.raises(ValueError, match="height must be an integer between 8 and 1024, got 2048"):
        SyntheticPeople().pair(0, 2048, 64)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        SyntheticPeople(seed=-1)
    with pytest.raises(ValueError, match="num_pairs must be a positive integer"):
        synthetic_pair_dataset(0, 32, 32)


def test_synthetic_dataset_and_collator():
    dataset = synthetic_pair_dataset(3, 64, 48, seed=2)
    assert len(dataset) == 3 and dataset["person_id"] == [0, 1, 2]
    batch = PosePairCollator(32, 24)([dataset[i] for i in range(3)])
    assert batch["reference_image"].shape == (3, 3, 32, 24)
    assert batch["target_heatmaps"].shape == (3, 18, 32, 24)
    assert batch["target_mask"].shape == (3, 1, 32, 24)
    assert -1 <= batch["target_image"].min() and batch["target_image"].max() <= 1
    pair = SyntheticPeople(seed=2).pair(1, 64, 48)
    expected = rescale_keypoints(pair["target_keypoints"], (64, 48), (32, 24))
    torch.testing.assert_close(batch["target_keypoints"][1], torch.from_numpy(expected))
    # Each heatmap peaks within a pixel of its keypoint.
    peak = batch["target_heatmaps"][1, 0].argmax()
    assert abs(int(peak % 24) - expected[0, 0]) <= 1 and abs(int(peak // 24) - expected[0, 1]) <= 1
    # The image content matches a direct resize of the rendered pair.
    direct = np.asarray(pair["target_image"].resize((24, 32), Image.BICUBIC), dtype=np.float32) / 127.5 - 1
    torch.testing.assert_close(batch["target_image"][1], torch.from_numpy(direct).permute(2, 0, 1))


def _write_patn(tmp_path, names, corrupt=None):
    people = SyntheticPeople(seed=0)
    (tmp_path / "test").mkdir()
    annotations = {}
    for i, name in enumerate(names):
        sample = people.sample(i, 0, 64, 44)
        sample["image"].save(tmp_path / "test" / name)
        keypoints = sample["keypoints"].copy()
        keypoints[16] = np.nan
        annotations[name] = keypoints
    if corrupt:
        (tmp_path / "test" / corrupt).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    write_patn_annotations(tmp_path / "fasion-resize-annotation-test.csv", annotations)
    return annotations


def test_patn_layout_loader(tmp_path):
    annotations = _write_patn(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    write_patn_pairs(tmp_path / "fasion-resize-pairs-test.csv", [("a.jpg", "b.jpg"), ("c.jpg", "a.jpg")])
    dataset = load_patn_pairs(tmp_path, split="test")
    assert len(dataset) == 2
    row = dataset[1]
    assert row["reference_image"]["path"].endswith("c.jpg")
    loaded = np.asarray(row["target_keypoints"], dtype=np.float32)
    np.testing.assert_allclose(loaded, np.round(annotations["a.jpg"]), equal_nan=True)
    batch = PosePairCollator(64, 44)([dataset[0], dataset[1]])
    assert torch.isnan(batch["reference_keypoints"][:, 16]).all()
    assert batch["reference_heatmaps"][:, 16].abs().sum() == 0


def test_patn_loader_skips_nothing(tmp_path):
    _write_patn(tmp_path, ["a.jpg", "b.jpg"])
    write_patn_pairs(tmp_path / "fasion-resize-pairs-test.csv", [("a.jpg", "zzz.jpg")])
    with pytest.raises(ValueError, match="'zzz.jpg' .* has no keypoints"):
        load_patn_pairs(tmp_path, split="test")
    with pytest.raises(ValueError, match="image_dir .*train.* does not exist"):
        load_patn_pairs(tmp_path, split="train")


def test_corrupt_image_file_is_named(tmp_path):
    _write_patn(tmp_path, ["a.png"], corrupt="broken.png")
    write_patn_annotations(
        tmp_path / "fasion-resize-annotation-test.csv",
        {"a.png": np.full((18, 2), 10.0), "broken.png": np.full((18, 2), 10.0)},
    )
    write_patn_pairs(tmp_path / "fasion-resize-pairs-test.csv", [("a.png", "broken.png")])
    dataset = load_patn_pairs(tmp_path, split="test")
    with pytest.raises(ValueError, match=r"cannot read image file '.*broken.png' \(target_image of example 0\)"):
        PosePairCollator(32, 22)([dataset[0]])
    # A truncated file is caught too.
    good = (tmp_path / "test" / "a.png").read_bytes()
    (tmp_path / "test" / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="cut.png"):
        load_image(str(tmp_path / "test" / "cut.png"))


def test_image_modes_become_rgb():
    gray = Image.new("L", (8, 6), 200)
    assert load_image(gray).mode == "RGB" and _pixels(load_image(gray))[0, 0].tolist() == [200] * 3
    rgba = Image.new("RGBA", (8, 6), (255, 0, 0, 0))
    rgba.putpixel((1, 1), (0, 255, 0, 255))
    out = _pixels(load_image(rgba))
    assert out[0, 0].tolist() == [128, 128, 128] and out[1, 1].tolist() == [0, 255, 0]
    palette = Image.new("P", (8, 6), 3)
    palette.putpalette([0, 0, 0, 10, 20, 30, 40, 50, 60, 70, 80, 90] + [0] * 756)
    assert _pixels(load_image(palette))[0, 0].tolist() == [70, 80, 90]
    sixteen = Image.fromarray(np.full((6, 8), 4000, dtype=np.uint16))
    assert load_image(sixteen).mode == "RGB"
    with pytest.raises(TypeError, match="reference_image must be a PIL image"):
        load_image(3.5, name="reference_image")


def test_generic_pairs_and_bad_keypoints(tmp_path):
    people = SyntheticPeople(seed=5)
    first, second = people.sample(0, 0, 48, 32), people.sample(0, 1, 48, 32)
    path = tmp_path / "first.png"
    first["image"].convert("L").save(path)
    json_path = tmp_path / "second_keypoints.json"
    write_openpose_json(second["keypoints"], json_path)
    dataset = pair_dataset([((str(path), first["keypoints"]), (np.asarray(second["image"]), str(json_path)))])
    batch = PosePairCollator(48, 32)([dataset[0]])
    assert batch["reference_image"].shape == (1, 3, 48, 32)
    channels = batch["reference_image"][0]
    torch.testing.assert_close(channels[0], channels[2])  # grayscale file became RGB
    torch.testing.assert_close(batch["target_keypoints"][0], torch.from_numpy(second["keypoints"]))

    with pytest.raises(ValueError, match=r"pairs\[0\] reference keypoints must have shape"):
        pair_dataset([((str(path), np.zeros((17, 2))), (str(path), first["keypoints"]))])
    with pytest.raises(ValueError, match="missing.png' does not exist"):
        pair_dataset([((str(tmp_path / "missing.png"), first["keypoints"]), (str(path), first["keypoints"]))])
    far = first["keypoints"].copy()
    far[2] = (500, 10)
    dataset = pair_dataset([((str(path), far), (str(path), first["keypoints"]))])
    with pytest.raises(ValueError, match=r"reference_keypoints of example 0 joint 2 .* outside"):
        PosePairCollator(48, 32)([dataset[0]])
    with pytest.raises(ValueError, match="height must be a positive integer"):
        PosePairCollator(0, 32)
