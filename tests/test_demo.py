"""`hf-ext demo`: the main job end to end (slow), and its guard against overwriting results."""

import json

import pytest
from huggingface_hub import ModelCard
from PIL import Image

from hf_ext import cli


def test_demo_refuses_to_overwrite_earlier_results(tmp_path):
    (tmp_path / "report.md").write_text("earlier results")
    with pytest.raises(SystemExit, match="--overwrite"):
        cli.main(["demo", "--output_dir", str(tmp_path)])
    assert (tmp_path / "report.md").read_text() == "earlier results"


@pytest.mark.slow
def test_quick_demo_writes_report_and_loadable_artifacts(tmp_path):
    from transformers import AutoModelForCausalLM

    from hf_ext.pose import PoseTransferPipeline
    from hf_ext.sande import ParrotPrompt

    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--output_dir", str(out)]) == 0

    summary = json.loads((out / "summary.json").read_text())
    sande = summary["sande"]["methods"]
    assert sande["backdoored"]["asr"] >= 0.9 and sande["sande"]["asr"] <= 0.1
    conv = summary["conv_basis"]["perplexity_and_answers"]
    assert conv["exact (num_bases=None)"]["perplexity"] == pytest.approx(conv["sdpa"]["perplexity"], rel=1e-4)
    assert summary["pose"]["quality"]["pose_transfer"]["ssim"] > summary["pose"]["quality"]["copy_reference"]["ssim"]

    report = (out / "report.md").read_text()
    for picture in ("sande/sande.png", "conv_basis/conv_basis.png", "pose/grid.png", "pose/animation.gif"):
        assert picture in report
        Image.open(out / picture).verify()

    cleaned = out / "sande" / "sande"
    AutoModelForCausalLM.from_pretrained(cleaned)
    ParrotPrompt.from_pretrained(cleaned, subfolder="parrot")
    conv_model = AutoModelForCausalLM.from_pretrained(out / "conv_basis" / "model", attn_implementation="conv_basis")
    assert conv_model.config.conv_basis["local_window"] == 32
    PoseTransferPipeline.from_pretrained(out / "pose" / "pipeline")
    for folder in (cleaned, out / "conv_basis" / "model", out / "pose" / "pipeline"):
        assert ModelCard.load(folder / "README.md").data.eval_results, folder
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pkl"))

    with pytest.raises(SystemExit, match="--overwrite"):
        cli.main(["demo", "--quick", "--output_dir", str(out)])
