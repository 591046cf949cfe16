"""SSIM / PSNR / local and person SSIM against direct, window-by-window formulas."""

import numpy as np
import pytest
import torch
from PIL import Image

from hf_ext.metrics.image_quality import (
    local_ssim,
    masked_ssim,
    optional_perceptual_metrics,
    pose_transfer_metrics,
    psnr,
    ssim,
    ssim_map,
    to_image_tensor,
)


def _reference_ssim_map(x, y, size=11, sigma=1.5):
    """Wang et al. (2004), one window at a time: x, y float (C, H, W) in [0, 1]."""
    coords = np.arange(size) - (size - 1) / 2
    g = np.exp(-(coords**2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    channels, height, width = x.shape
    out = np.zeros((channels, height - size + 1, width - size + 1))
    for c in range(channels):
        for i in range(out.shape[1]):
            for j in range(out.shape[2]):
                a, b = x[c, i : i + size, j : j + size], y[c, i : i + size, j : j + size]
                mu_a, mu_b = (w * a).sum(), (w * b).sum()
                var_a, var_b = (w * (a - mu_a) ** 2).sum(), (w * (b - mu_b) ** 2).sum()
                cov = (w * (a - mu_a) * (b - mu_b)).sum()
                out[c, i, j] = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return out.mean(axis=0)


def _pair(seed=0, shape=(2, 3, 20, 17)):
    rng = np.random.default_rng(seed)
    x = rng.random(shape)
    y = np.clip(x + 0.2 * rng.standard_normal(shape), 0, 1)
    return x, y


def test_ssim_matches_window_formula_without_padding():
    x, y = _pair()
    values = ssim_map(torch.from_numpy(x), torch.from_numpy(y))
    assert values.shape == (2, 10, 7)  # valid windows only
    for b in range(2):
        np.testing.assert_allclose(values[b].numpy(), _reference_ssim_map(x[b], y[b]), atol=1e-10)
    np.testing.assert_allclose(ssim(torch.from_numpy(x), torch.from_numpy(y)).numpy(), values.mean(dim=(1, 2)).numpy())
    assert ssim(torch.from_numpy(x), torch.from_numpy(x)).tolist() == pytest.approx([1.0, 1.0])


def test_input_forms_agree():
    x, y = _pair(shape=(1, 3, 16, 16))
    as_uint8 = [(v[0].transpose(1, 2, 0) * 255).round().astype(np.uint8) for v in (x, y)]
    from_pil = ssim(Image.fromarray(as_uint8[0]), Image.fromarray(as_uint8[1]))
    from_array = ssim(as_uint8[0], as_uint8[1])
    from_signed = ssim(
        torch.from_numpy(as_uint8[0] / 127.5 - 1).permute(2, 0, 1),
        torch.from_numpy(as_uint8[1] / 127.5 - 1).permute(2, 0, 1),
        value_range=(-1.0, 1.0),
    )
    torch.testing.assert_close(from_pil, from_array)
    torch.testing.assert_close(from_signed, from_array)


def test_psnr_formula():
    x = torch.full((1, 3, 12, 12), 0.5, dtype=torch.float64)
    assert psnr(x + 0.1, x).item() == pytest.approx(20.0)  # MSE 0.01
    assert psnr(x, x).item() == float("inf")


def test_bad_inputs_raise():
    x = torch.rand(1, 3, 12, 12)
    with pytest.raises(ValueError, match="prediction and target must have the same shape"):
        ssim(x, torch.rand(1, 3, 12, 13))
    with pytest.raises(ValueError, match="at least 11x11 for SSIM without padding, got 8x12"):
        ssim(torch.rand(1, 3, 8, 12), torch.rand(1, 3, 8, 12))
    with pytest.raises(TypeError, match="prediction must be PIL images"):
        psnr("image.png", x)
    with pytest.raises(ValueError, match=r"mask must have shape \(1, 12, 12\)"):
        masked_ssim(x, x, np.ones((1, 10, 10)))


def test_masked_ssim_averages_windows_centred_in_the_mask():
    x, y = _pair(shape=(1, 3, 24, 20))
    mask = np.zeros((1, 24, 20), bool)
    mask[0, 8:18, 6:12] = True
    reference = _reference_ssim_map(x[0], y[0])  # (14, 10): window (i, j) centred on pixel (i + 5, j + 5)
    expected = reference[8 - 5 : 18 - 5, 6 - 5 : 12 - 5].mean()
    assert masked_ssim(torch.from_numpy(x), torch.from_numpy(y), mask).item() == pytest.approx(expected)
    full = masked_ssim(torch.from_numpy(x), torch.from_numpy(y), np.ones((24, 20)))
    assert full.item() == pytest.approx(reference.mean())
    empty = masked_ssim(torch.from_numpy(x), torch.from_numpy(y), np.zeros((24, 20)))
    assert torch.isnan(empty).all()


def test_local_ssim_sees_only_its_crop():
    from hf_ext.pose.keypoints import keypoint_crops

    height, width = 128, 88
    keypoints = np.array(
        [[44, 20], [44, 30], [35, 31], [31, 45], [30, 59], [53, 31], [57, 45], [58, 59], [38, 60],
         [37, 82], [36, 105], [50, 60], [51, 82], [52, 105], [42, 18], [46, 18], [39, 19], [49, 19]],
        dtype=np.float32,
    )
    target = torch.rand(1, 3, height, width, dtype=torch.float64)
    prediction = target.clone()
    x0, y0, x1, y1 = keypoint_crops(keypoints, height, width)["left_hand"]
    prediction[..., y0:y1, x0:x1] = torch.rand(1, 3, y1 - y0, x1 - x0, dtype=torch.float64)
    scores = local_ssim(prediction, target, keypoints[None])
    assert scores["left_hand"].item() < 0.5
    assert scores["right_foot"].item() == pytest.approx(1.0) and scores["face"].item() == pytest.approx(1.0)
    missing = keypoints.copy()
    missing[13] = np.nan
    scores = local_ssim(prediction, target, missing[None], parts=("left_foot", "left_hand"))
    assert torch.isnan(scores["left_foot"]).all()
    assert scores["mean"].item() == pytest.approx(scores["left_hand"].item())

    summary = pose_transfer_metrics(prediction, target, keypoints=keypoints[None], masks=np.ones((1, height, width)))
    assert set(summary) == {"ssim", "psnr", "local_ssim", "person_ssim"}
    assert summary["person_ssim"] == pytest.approx(summary["ssim"])
    assert summary["local_ssim"] < summary["ssim"]


def test_lpips_and_fid_skip_without_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    x = torch.rand(1, 3, 16, 16)
    results = optional_perceptual_metrics(x, x)
    assert results["lpips"] is None and results["fid"] is None
    assert set(results["skipped"]) == {"lpips", "fid"}
    assert all(results["skipped"].values())


def test_to_image_tensor_ranges():
    signed = torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3)
    assert to_image_tensor(signed, value_range=(-1.0, 1.0)).flatten().tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="floating point"):
        to_image_tensor(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


def test_evaluate_module_matches_functions():
    import evaluate

    import hf_ext.metrics.image_quality as image_quality

    rng = np.random.default_rng(0)
    predictions = [Image.fromarray(rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)) for _ in range(2)]
    references = [Image.fromarray(rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)) for _ in range(2)]
    masks = np.zeros((2, 20, 16))
    masks[:, 6:14, 4:12] = 1
    metric = evaluate.load(image_quality.__file__)
    scores = metric.compute(predictions=predictions, references=references, masks=masks)
    expected = pose_transfer_metrics(predictions, references, masks=masks)
    assert scores == pytest.approx(expected)
    assert set(scores) == {"ssim", "psnr", "person_ssim"}
