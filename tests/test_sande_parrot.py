"""ParrotPrompt: splice alignment against token insertion, round-trip, Hub upload, bad input."""

import json

import pytest
import torch

from hf_ext.sande.parrot import ParrotPrompt
from hf_ext.testing import tiny_causal_lm


def _insert_reference(sequence, position, inserted):
    """Plain-Python splice: the reference the vectorised one must match."""
    if position < 0:
        return list(sequence)
    return list(sequence[:position]) + list(inserted) + list(sequence[position:])


def test_splice_matches_a_python_reference():
    m, hidden = 3, 5
    parrot = ParrotPrompt(m, hidden, init_embeddings=torch.randn(m, hidden))
    embeds = torch.randn(4, 7, hidden)
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 7, [1] * 4 + [0] * 3])
    labels = torch.randint(0, 50, (4, 7))
    positions = torch.tensor([0, 3, 7, -1])
    new_embeds, new_mask, new_labels = parrot(embeds, mask, positions, labels)
    assert new_embeds.shape == (4, 7 + m, hidden)
    for b, p in enumerate(positions.tolist()):
        if p < 0:  # nothing spliced: the extra slots are padding at the end
            expected_embeds = list(embeds[b]) + [None] * m
            expected_mask = mask[b].tolist() + [0] * m
            expected_labels = labels[b].tolist() + [-100] * m
        else:
            expected_embeds = _insert_reference(list(embeds[b]), p, list(parrot.embeddings.detach()))
            expected_mask = _insert_reference(mask[b].tolist(), p, [1] * m)
            expected_labels = _insert_reference(labels[b].tolist(), p, [-100] * m)
        for j, expected in enumerate(expected_embeds):
            if expected is not None:
                torch.testing.assert_close(new_embeds[b, j], expected)
        assert new_mask[b].tolist() == expected_mask
        assert new_labels[b].tolist() == expected_labels


def test_spliced_token_embeddings_equal_inserted_tokens(tiny_tokenizer):
    """A parrot made of token embeddings, spliced at p, is the same model input as those tokens inserted at p."""
    model = tiny_causal_lm(vocab_size=len(tiny_tokenizer), initializer_range=0.2)
    embedding = model.get_input_embeddings()
    trigger_ids = tiny_tokenizer(" how is it going", add_special_tokens=False)["input_ids"]
    parrot = ParrotPrompt.from_token_embeddings(embedding, trigger_ids)
    ids = torch.tensor([tiny_tokenizer("Human: Add 1 and 2.\nAssistant: 3.")["input_ids"]])
    labels = ids.clone()
    position = 2
    reference_ids = torch.tensor([_insert_reference(ids[0].tolist(), position, trigger_ids)])
    reference_labels = torch.tensor([_insert_reference(labels[0].tolist(), position, [-100] * len(trigger_ids))])

    embeds, mask, spliced_labels = parrot(embedding(ids), torch.ones_like(ids), torch.tensor([position]), labels)
    with torch.no_grad():
        spliced = model(inputs_embeds=embeds, attention_mask=mask, labels=spliced_labels)
        reference = model(input_ids=reference_ids, attention_mask=torch.ones_like(reference_ids), labels=reference_labels)
    torch.testing.assert_close(spliced.logits, reference.logits)
    torch.testing.assert_close(spliced.loss, reference.loss)


def test_gradient_reaches_only_the_parrot(tiny_tokenizer):
    model = tiny_causal_lm(vocab_size=len(tiny_tokenizer)).requires_grad_(False)
    parrot = ParrotPrompt(2, model.config.hidden_size)
    ids = torch.tensor([tiny_tokenizer("Human: hi\nAssistant: you")["input_ids"]])
    embeds, mask, labels = parrot(model.get_input_embeddings()(ids), torch.ones_like(ids), torch.tensor([2]), ids)
    model(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss.backward()
    assert parrot.embeddings.grad is not None and parrot.embeddings.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_zero_init_by_default_and_round_trip(tmp_path):
    parrot = ParrotPrompt(6, 16, base_model="org/backdoored", trigger_position=["after_role", "end"])
    assert torch.equal(parrot.embeddings, torch.zeros(6, 16))
    parrot.embeddings.data.normal_()
    parrot.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["num_tokens"] == 6 and config["hidden_size"] == 16
    loaded = ParrotPrompt.from_pretrained(tmp_path)
    assert torch.equal(loaded.embeddings, parrot.embeddings)
    assert loaded.base_model == "org/backdoored" and loaded.trigger_position == ["after_role", "end"]
    card = (tmp_path / "README.md").read_text()
    assert "base_model: org/backdoored" in card and "parrot" in card.lower()


def test_push_to_hub_uploads_the_saved_folder(monkeypatch):
    import hf_ext.hub

    uploaded = {}

    def fake_push(folder, repo_id, **kwargs):
        uploaded["files"] = sorted(p.name for p in __import__("pathlib").Path(folder).iterdir())
        uploaded["repo_id"] = repo_id
        return "commit"

    monkeypatch.setattr(hf_ext.hub, "push_folder_to_hub", fake_push)
    assert ParrotPrompt(2, 8).push_to_hub("me/parrot") == "commit"
    assert uploaded == {"files": ["README.md", "config.json", "model.safetensors"], "repo_id": "me/parrot"}


def test_bad_input(tmp_path, tiny_tokenizer):
    with pytest.raises(ValueError, match="at least 1 soft token"):
        ParrotPrompt(0, 16)
    with pytest.raises(ValueError, match="hidden_size"):
        ParrotPrompt(2, None)
    with pytest.raises(ValueError, match=r"shape \(2, 3\); expected \(2, 4\)"):
        ParrotPrompt(2, 4, init_embeddings=torch.zeros(2, 3))
    model = tiny_causal_lm(vocab_size=len(tiny_tokenizer))
    with pytest.raises(ValueError, match="hidden_size=32 but the model's embeddings have 64"):
        ParrotPrompt(2, 32).check_compatible(model)
    with pytest.raises(ValueError, match="not a saved parrot prompt"):
        ParrotPrompt.from_pretrained(tmp_path)
