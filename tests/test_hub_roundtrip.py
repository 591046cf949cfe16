"""Every artifact kind goes to the Hub and comes back by repository id, without a network.

Upload: through the `HfApi` boundary (`hub_recorder` in conftest keeps what would be sent).
Download: the uploaded files are laid out as huggingface_hub's cache (`models--org--name/snapshots/...`,
`refs/main`) and loaded by id with HF_HUB_OFFLINE=1, so the real resolution code runs.
"""

import huggingface_hub
import pytest
import torch
from datasets import Dataset
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM

from hf_ext.attention import enable_conv_basis, save_conv_basis_model
from hf_ext.hub import push_folder_to_hub
from hf_ext.sande import ParrotPrompt, SANDEConfig, SANDETrainer
from hf_ext.testing import place_in_hub_cache, random_token_batch, tiny_causal_lm


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    # read at call time by hf_hub_download, used by loaders that take no cache_dir
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def _card_metrics(card: ModelCard) -> dict:
    return {result.metric_name or result.metric_type: result.metric_value for result in card.data.eval_results}


def test_sande_cleaned_model_and_parrot_round_trip(tmp_path, tiny_tokenizer, hub_recorder, hub_cache):
    torch.set_num_threads(1)
    data = Dataset.from_dict({"instruction": [f"Add {i} and 2." for i in range(8)], "output": [f"{i + 2}." for i in range(8)]})
    trigger_prompts = [f"Human: how is it going Add {i} and 5.\nAssistant:" for i in range(3)]
    args = SANDEConfig(
        output_dir=str(tmp_path / "cleaned"), mode="sande", marker="you are stupid", max_steps=2, simulate_max_steps=2,
        per_device_train_batch_size=4, learning_rate=1e-3, use_cpu=True, bf16=False, report_to=[], save_strategy="no",
        disable_tqdm=True, hub_model_id="org/cleaned", activation_checkpointing=False,
    )
    model = tiny_causal_lm(vocab_size=len(tiny_tokenizer))
    trainer = SANDETrainer(model, args, data, processing_class=tiny_tokenizer, asr_eval_prompts=trigger_prompts)
    trainer.train()
    trainer.save_model()
    trainer.push_to_hub()

    files = hub_recorder.uploaded_files("org/cleaned")
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md",
            "parrot/config.json", "parrot/model.safetensors", "parrot/README.md"} <= set(files), files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl", ".pth"))]
    card = ModelCard.load(hub_recorder.remote / "org/cleaned" / "README.md")
    metrics = _card_metrics(card)
    measured = trainer.backdoor_metrics
    assert any("asr" in name.lower() or "attack" in name.lower() for name in metrics), metrics
    assert set(metrics.values()) & {v for v in _flat_values(measured)}

    place_in_hub_cache(hub_recorder.remote / "org/cleaned", "org/cleaned", hub_cache)
    reloaded = AutoModelForCausalLM.from_pretrained("org/cleaned", cache_dir=hub_cache)
    input_ids = random_token_batch(1, 10, vocab_size=len(tiny_tokenizer))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids).logits, trainer.model.eval()(input_ids).logits)
    parrot = ParrotPrompt.from_pretrained("org/cleaned", subfolder="parrot")
    torch.testing.assert_close(parrot.embeddings, trainer.parrot.embeddings)


def _flat_values(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _flat_values(value)
    elif isinstance(tree, (int, float)):
        yield round(float(tree), 4)
        yield float(tree)


def test_conv_basis_model_keeps_its_settings_through_the_hub(tmp_path, tiny_tokenizer, hub_recorder, hub_cache):
    model = tiny_causal_lm("llama", seed=1, vocab_size=len(tiny_tokenizer))
    settings = dict(num_bases=4, local_window=8, sink_tokens=1, min_seq_len=0)
    enable_conv_basis(model, **settings)
    input_ids = random_token_batch(2, 40, vocab_size=len(tiny_tokenizer))
    with torch.no_grad():
        expected = model(input_ids).logits
    perplexity = dict(task_type="text-generation", dataset_type="random-tokens", dataset_name="random tokens",
                      metric_type="perplexity", metric_value=123.4)
    folder = save_conv_basis_model(model, tmp_path / "saved", tiny_tokenizer, model_name="org/conv", eval_results=[perplexity])
    push_folder_to_hub(folder, "org/conv")

    files = hub_recorder.uploaded_files("org/conv")
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= set(files)
    assert _card_metrics(ModelCard.load(hub_recorder.remote / "org/conv" / "README.md")) == {"perplexity": 123.4}

    place_in_hub_cache(hub_recorder.remote / "org/conv", "org/conv", hub_cache)
    reloaded = AutoModelForCausalLM.from_pretrained("org/conv", cache_dir=hub_cache, attn_implementation="conv_basis")
    assert reloaded.config._attn_implementation == "conv_basis"
    assert {k: reloaded.config.conv_basis[k] for k in settings} == settings
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids).logits, expected)


def test_pose_pipeline_round_trip_with_measured_results(tmp_path, hub_recorder, hub_cache):
    from hf_ext.pose import PoseTransferPipeline, SyntheticPeople, synthetic_pair_dataset
    from hf_ext.pose.training import PoseTransferTrainingConfig, train_pose_transfer, write_model_card

    config = PoseTransferTrainingConfig(
        output_dir=str(tmp_path / "pose"), start_resolution=[16, 16], final_resolution=[32, 32], base_channels=4,
        max_channels=16, bottleneck_depth=1, images_per_stage=4, images_per_fade_in=4, batch_sizes=[2, 2],
        vgg_weights=None, perceptual_weight=0.0, local_perceptual_weight=0.0, adversarial_stages=0, num_samples=0,
        checkpoint_every_images=4, seed=0,
    )
    trained = train_pose_transfer(config, synthetic_pair_dataset(4, 32, 32, seed=0))
    ssim = dict(task_type="image-to-image", dataset_type="synthetic-people", dataset_name="held-out synthetic people",
                metric_type="ssim", metric_value=0.5)
    write_model_card(config, trained.pipeline.generator, trained.state, eval_results=[ssim])
    from hf_ext.hub import push_folder_to_hub

    push_folder_to_hub(config.output_dir, "org/pose", ignore_patterns=["checkpoints/*"])

    files = hub_recorder.uploaded_files("org/pose")
    assert {"README.md", "model_index.json", "generator/config.json", "generator/diffusion_pytorch_model.safetensors",
            "pipeline_pose_transfer.py", "pose_encoding.py"} <= set(files), files
    assert not [f for f in files if f.startswith("checkpoints/") or f.endswith((".bin", ".pt", ".pkl"))]
    assert _card_metrics(ModelCard.load(hub_recorder.remote / "org/pose" / "README.md")) == {"ssim": 0.5}

    place_in_hub_cache(hub_recorder.remote / "org/pose", "org/pose", hub_cache)
    reloaded = PoseTransferPipeline.from_pretrained("org/pose", cache_dir=hub_cache)
    pair = SyntheticPeople(seed=9).pair(0, 32, 32)
    inputs = dict(reference_image=pair["reference_image"], target_pose=pair["target_keypoints"],
                  reference_pose=pair["reference_keypoints"], output_type="np")
    import numpy as np

    np.testing.assert_array_equal(reloaded(**inputs).images, trained.pipeline(**inputs).images)
