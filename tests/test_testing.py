"""The tiny-model factories are deterministic and go through the real from_pretrained path."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_ext.testing import (
    place_in_hub_cache,
    TINY_ARCHITECTURES,
    random_token_batch,
    save_pretrained_to,
    tiny_causal_lm,
    tiny_config,
    train_tiny_tokenizer,
)


@pytest.mark.parametrize("architecture", TINY_ARCHITECTURES)
def test_tiny_models_are_deterministic_and_reload(architecture, tmp_path, tiny_tokenizer):
    model = tiny_causal_lm(architecture, seed=3)
    same = tiny_causal_lm(architecture, seed=3)
    other = tiny_causal_lm(architecture, seed=4)
    for (name, a), b, c in zip(model.state_dict().items(), same.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, c) for a, c in zip(model.state_dict().values(), other.state_dict().values()))

    config = model.config
    assert config.hidden_size == 64
    assert config.num_attention_heads > config.num_key_value_heads  # grouped-query heads

    path = save_pretrained_to(model, tiny_tokenizer, tmp_path)
    assert (path / "model.safetensors").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(path)
    input_ids = random_token_batch(2, 12, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids).logits, model(input_ids).logits)
    assert AutoTokenizer.from_pretrained(path).pad_token_id == tiny_tokenizer.pad_token_id


def test_tiny_config_rejects_unknown_architecture():
    with pytest.raises(ValueError, match="architecture='gpt5'"):
        tiny_config("gpt5")


def test_tokenizer_special_tokens_match_the_tiny_configs():
    tokenizer = train_tiny_tokenizer()
    config = tiny_config("llama")
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (
        config.pad_token_id,
        config.bos_token_id,
        config.eos_token_id,
    )
    assert len(tokenizer) <= config.vocab_size


def test_tokenizer_is_deterministic_round_trips_and_splits_digits():
    texts = ["Human: Add 123 and 45.\nAssistant: 168.", "the cat sat on the mat"] * 20
    first, second = train_tiny_tokenizer(texts, vocab_size=300), train_tiny_tokenizer(texts, vocab_size=300)
    assert first.get_vocab() == second.get_vocab()
    text = "Human: Add 123 and 45.\nAssistant: 168."
    ids = first(text)["input_ids"]
    assert first.decode(ids) == text
    assert [first.decode([i]) for i in first("12345")["input_ids"]] == list("12345")


def test_chat_template_renders_the_paper_prompt_format(tiny_tokenizer):
    prompt = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "Human: hi\nAssistant:"


def test_random_token_batch_excludes_special_tokens_and_is_seeded():
    batch = random_token_batch(3, 50, vocab_size=100, seed=7)
    assert batch.shape == (3, 50)
    assert batch.min() >= 4 and batch.max() < 100
    assert torch.equal(batch, random_token_batch(3, 50, vocab_size=100, seed=7))


def test_place_in_hub_cache_resolves_by_repo_id_offline(tmp_path, tiny_tokenizer):
    import huggingface_hub

    model = tiny_causal_lm("llama", seed=5)
    saved = save_pretrained_to(model, tiny_tokenizer, tmp_path / "saved")
    cache = tmp_path / "cache"
    snapshot = place_in_hub_cache(saved, "org/tiny-llama", cache)
    assert huggingface_hub.constants.HF_HUB_OFFLINE
    resolved = huggingface_hub.snapshot_download("org/tiny-llama", cache_dir=cache)
    assert resolved == str(snapshot)
    reloaded = AutoModelForCausalLM.from_pretrained("org/tiny-llama", cache_dir=cache)
    input_ids = random_token_batch(1, 8, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids).logits, model(input_ids).logits)
    with pytest.raises(OSError):
        AutoModelForCausalLM.from_pretrained("org/not-there", cache_dir=cache)
