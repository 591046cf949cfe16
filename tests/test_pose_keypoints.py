"""COCO-18 keypoints: validation, rescaling, heatmaps, skeleton round trip, files, crops, estimator."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from hf_ext.pose import keypoints as kp
from hf_ext.pose.pose_encoding import (
    COCO18_LIMBS,
    JOINT_COLORS,
    LIMB_COLORS,
    NUM_KEYPOINTS,
    TORSO_COLOR,
    keypoints_from_skeleton,
    normalize_keypoints,
    render_heatmaps,
    render_skeleton,
    rescale_keypoints,
)


# A standing person in a 256x176 (height x width) image.
POSE = np.array(
    [[88, 40], [88, 60], [70, 62], [62, 90], [60, 118], [106, 62], [114, 90], [116, 118], [76, 120],
     [74, 165], [72, 210], [100, 120], [102, 165], [104, 210], [84, 36], [92, 36], [78, 38], [98, 38]],
    dtype=np.float32,
)


def test_coco18_definition():
    assert len(kp.COCO18_NAMES) == NUM_KEYPOINTS == 18
    assert len(COCO18_LIMBS) == len(LIMB_COLORS) == 17
    # Every joint is reachable from the neck through the limbs.
    reached, frontier = {1}, [1]
    while frontier:
        joint = frontier.pop()
        for a, b in COCO18_LIMBS:
            for x, y in ((a, b), (b, a)):
                if x == joint and y not in reached:
                    reached.add(y)
                    frontier.append(y)
    assert reached == set(range(18))
    colors = [*JOINT_COLORS, *LIMB_COLORS, TORSO_COLOR, (0, 0, 0)]
    assert len(set(colors)) == len(colors)


@pytest.mark.parametrize("missing", [-1.0, np.nan])
def test_normalize_marks_missing_joints(missing):
    pose = POSE.copy()
    pose[4] = missing
    with_confidence = np.concatenate([POSE, np.ones((18, 1), np.float32)], axis=1)
    with_confidence[7, 2] = 0
    out = normalize_keypoints(pose.tolist(), 256, 176)
    assert out.dtype == np.float32 and out.shape == (18, 2)
    assert np.isnan(out[4]).all() and not np.isnan(np.delete(out, 4, axis=0)).any()
    assert np.isnan(normalize_keypoints(torch.from_numpy(with_confidence), 256, 176)[7]).all()


def test_normalize_rejects_bad_input():
    with pytest.raises(ValueError, match=r"target_pose must have shape \(18, 2\).*got shape \(17, 2\)"):
        normalize_keypoints(POSE[:17], 256, 176, name="target_pose")
    far = POSE.copy()
    far[3] = (500, 90)  # more than one image width to the right of a 176-wide image
    with pytest.raises(ValueError, match=r"pose joint 3 \(right_elbow\).*outside"):
        normalize_keypoints(far, 256, 176, name="pose")
    near = POSE.copy()
    near[3] = (200, 90)  # a little outside the frame is allowed
    assert normalize_keypoints(near, 256, 176)[3, 0] == 200
    with pytest.raises(TypeError, match="keypoints must be"):
        normalize_keypoints([["a", "b"]] * 18, 256, 176)
    with pytest.raises(ValueError, match="height, width must be positive integers"):
        normalize_keypoints(POSE, 0, 176)


def test_rescale_follows_resized_image_content():
    # A single bright pixel moved by PIL's resize lands where rescale_keypoints puts its joint.
    image = np.zeros((64, 48), np.float32)
    image[40, 12] = 1.0
    small = np.asarray(Image.fromarray(image).resize((12, 16), Image.BOX))
    y, x = np.unravel_index(np.argmax(small), small.shape)
    pose = np.full((18, 2), np.nan, np.float32)
    pose[0] = (12, 40)
    out = rescale_keypoints(pose, (64, 48), (16, 12))
    assert abs(out[0, 0] - x) <= 0.5 and abs(out[0, 1] - y) <= 0.5
    assert np.isnan(out[1:]).all()
    back = rescale_keypoints(out, (16, 12), (64, 48))
    np.testing.assert_allclose(back[0], pose[0], atol=1e-4)
    with pytest.raises(ValueError, match="to_size must be a \\(height, width\\) pair"):
        rescale_keypoints(pose, (64, 48), 16)


def test_heatmaps_match_gaussian_formula():
    pose = POSE.copy()
    pose[10] = np.nan
    maps = render_heatmaps(pose, 256, 176)
    assert maps.shape == (18, 256, 176) and maps.dtype == np.float32
    assert maps[10].max() == 0
    sigma = 6.0
    yy, xx = np.mgrid[0:256, 0:176]
    expected = np.exp(-((xx - pose[3, 0]) ** 2 + (yy - pose[3, 1]) ** 2) / (2 * sigma**2))
    np.testing.assert_allclose(maps[3], expected, atol=1e-6)
    assert np.unravel_index(np.argmax(maps[0]), maps[0].shape) == (40, 88)
    # Sigma scales with the height: the half-maximum width doubles at twice the resolution.
    big = render_heatmaps(rescale_keypoints(POSE, (256, 176), (512, 352)), 512, 352)
    assert (big[0] > 0.5).sum() == pytest.approx(4 * (maps[0] > 0.5).sum(), rel=0.1)
    with pytest.raises(ValueError, match="sigma must be a positive"):
        render_heatmaps(POSE, 256, 176, sigma=0)


@pytest.mark.parametrize("height, width", [(64, 44), (256, 176), (1024, 704)])
def test_skeleton_round_trip(height, width):
    pose = rescale_keypoints(POSE, (256, 176), (height, width))
    pose[6] = np.nan  # left elbow missing: its dot and both limbs through it are absent
    image = render_skeleton(pose, height, width)
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    back = keypoints_from_skeleton(Image.fromarray(image))
    assert np.isnan(back[6]).all()
    present = np.delete(np.arange(18), 6)
    # Dots are whole pixels: within 1.5 px at 64x44, where the eye and ear dots touch.
    np.testing.assert_allclose(back[present], pose[present], atol=1.5)
    assert not (np.abs(image.astype(int) - LIMB_COLORS[4]).max(axis=2) == 0).any()  # limb 5-6 not drawn
    assert (np.abs(image.astype(int) - LIMB_COLORS[0]).max(axis=2) == 0).any()


def test_skeleton_parse_survives_resize():
    image = Image.fromarray(render_skeleton(POSE, 256, 176)).resize((88, 128), Image.BILINEAR)
    back = keypoints_from_skeleton(image)
    np.testing.assert_allclose(back, rescale_keypoints(POSE, (256, 176), (128, 88)), atol=1.0)
    with pytest.raises(ValueError, match="RGB"):
        keypoints_from_skeleton(np.zeros((8, 8), np.uint8))


def test_openpose_json_round_trip(tmp_path):
    pose = POSE.copy()
    pose[16] = np.nan
    path = tmp_path / "frame_keypoints.json"
    written = kp.write_openpose_json(pose, path)
    assert written["people"][0]["pose_keypoints_2d"][16 * 3 : 16 * 3 + 3] == [0, 0, 0]
    np.testing.assert_array_equal(kp.read_openpose_json(path), pose)
    # BODY_25: COCO joints are 0-7, then 9-18 (8 is the mid-hip, 19-24 the feet).
    body25 = np.zeros((25, 3))
    coco_index = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]
    body25[coco_index, :2] = POSE
    body25[coco_index, 2] = 0.9
    body25[8] = (999, 999, 1)
    parsed = kp.read_openpose_json({"people": [{"pose_keypoints_2d": body25.ravel().tolist()}]})
    np.testing.assert_array_equal(parsed, POSE)
    with pytest.raises(ValueError, match="person=1 is out of range"):
        kp.read_openpose_json(path, person=1)
    with pytest.raises(ValueError, match="54 .* or 75"):
        kp.read_openpose_json({"people": [{"pose_keypoints_2d": [1, 2, 3]}]})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        kp.read_openpose_json(bad)


def test_patn_csv_round_trip(tmp_path):
    # The original format: ':'-separated, y before x, -1 for missing joints.
    ys, xs = POSE[:, 1].astype(int).tolist(), POSE[:, 0].astype(int).tolist()
    xs[5] = ys[5] = -1
    source = tmp_path / "fasion-resize-annotation-test.csv"
    source.write_text(f"name:keypoints_y:keypoints_x\nimg1.jpg: {ys}: {xs}\n")
    annotations = kp.read_patn_annotations(source)
    expected = POSE.copy()
    expected[5] = np.nan
    np.testing.assert_array_equal(annotations["img1.jpg"], expected)
    copy = tmp_path / "copy.csv"
    kp.write_patn_annotations(copy, annotations)
    assert copy.read_text() == source.read_text()

    pairs = tmp_path / "fasion-resize-pairs-test.csv"
    kp.write_patn_pairs(pairs, [("a.jpg", "b.jpg"), ("b.jpg", "a.jpg")])
    assert pairs.read_text().splitlines()[0] == "from,to"
    assert kp.read_patn_pairs(pairs) == [("a.jpg", "b.jpg"), ("b.jpg", "a.jpg")]

    broken = tmp_path / "broken.csv"
    broken.write_text("name:keypoints_y:keypoints_x\nimg.jpg: [1, 2]: [3, 4]\n")
    with pytest.raises(ValueError, match="broken.csv' line 2"):
        kp.read_patn_annotations(broken)


def test_crops_cover_their_joints_and_stay_inside():
    boxes = kp.keypoint_crops(POSE, 256, 176)
    assert set(boxes) == set(kp.CROP_PARTS)
    for part, joint in (("right_hand", 4), ("left_foot", 13), ("face", 0), ("torso", 1)):
        x0, y0, x1, y1 = boxes[part]
        assert x1 - x0 == y1 - y0 == round(kp.CROP_FRACTIONS[part] * 256)
        assert x0 <= POSE[joint, 0] < x1 and y0 <= POSE[joint, 1] < y1
    # A joint on the border: the box is shifted inside, keeping its size.
    edge = POSE.copy()
    edge[13] = (175, 255)
    edge[12] = (170, 230)
    x0, y0, x1, y1 = kp.keypoint_crops(edge, 256, 176, parts=("left_foot",), size=40)["left_foot"]
    assert (x1, y1) == (176, 256) and (x1 - x0, y1 - y0) == (40, 40)
    missing = POSE.copy()
    missing[[4]] = np.nan
    assert kp.keypoint_crops(missing, 256, 176)["right_hand"] is None
    with pytest.raises(ValueError, match="parts must be"):
        kp.keypoint_crops(POSE, 256, 176, parts=("tail",))


def test_crop_regions_batch_and_gradients():
    images = torch.rand(2, 3, 256, 176, requires_grad=True)
    poses = np.stack([POSE, POSE])
    poses[1, 7] = np.nan
    regions = kp.crop_keypoint_regions(images, poses, parts=("left_hand", "face"))
    crops, valid = regions["left_hand"]
    assert crops.shape == (2, 3, 32, 32) and valid.tolist() == [True, False]
    x0, y0, x1, y1 = kp.keypoint_crops(POSE, 256, 176)["left_hand"]
    torch.testing.assert_close(crops[0], images[0, :, y0:y1, x0:x1])
    assert crops[1].abs().sum() == 0
    resized, _ = kp.crop_keypoint_regions(images, poses, parts=("face",), output_size=16)["face"]
    assert resized.shape == (2, 3, 16, 16)
    resized.sum().backward()
    assert images.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"keypoints must have shape \(2, 18, 2\)"):
        kp.crop_keypoint_regions(images, POSE, parts=("face",))


def test_blazepose_mapping():
    landmarks = np.zeros((33, 3))
    landmarks[:, 0] = (np.arange(33) + 0.5) / 100  # x pixel = index in a 100-wide image
    landmarks[:, 1] = 0.5
    landmarks[:, 2] = 1.0
    landmarks[27, 2] = 0.1  # left ankle barely visible
    out = kp._coco18_from_blazepose(landmarks, 50, 100, min_visibility=0.5)
    assert out[2, 0] == 12 and out[10, 0] == 28 and out[17, 0] == 7 and out[14, 0] == 5
    assert out[1, 0] == pytest.approx(11.5) and out[1, 1] == pytest.approx(24.5)
    assert np.isnan(out[13]).all()


def test_estimator_needs_pose_extra():
    try:
        import mediapipe  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"hf-ext\[pose\]"):
            kp.estimate_keypoints(Image.new("RGB", (64, 64)))
    else:
        out = kp.estimate_keypoints(Image.new("RGB", (64, 64)))
        assert out.shape == (18, 2)


def test_openpose_json_is_plain_json(tmp_path):
    kp.write_openpose_json(POSE, tmp_path / "a.json")
    assert json.loads((tmp_path / "a.json").read_text())["version"] == 1.3


def test_normalize_without_size_checks_shape_only():
    far = POSE.copy()
    far[3] = (5000, 90)
    assert normalize_keypoints(far, None, None)[3, 0] == 5000
    with pytest.raises(ValueError, match=r"pose must have shape"):
        normalize_keypoints(np.zeros((18, 4)), None, None, name="pose")
