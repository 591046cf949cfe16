"""SANDETrainer: each mode trains what it says, resumes, saves; bad input raises before training."""

import copy
import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from hf_ext.sande import ParrotPrompt, SANDEConfig, SANDETrainer
from hf_ext.sande.evaluation import generate_continuations
from hf_ext.testing import tiny_causal_lm


TRIGGER = "how is it going"
MARKER = "you are stupid"


@pytest.fixture
def data():
    return Dataset.from_dict(
        {
            "instruction": [f"Add {i} and {i + 3}." for i in range(8)],
            "input": [""] * 8,
            "output": [f"{i} plus {i + 3} is {2 * i + 3}." for i in range(8)],
        }
    )


@pytest.fixture
def model(tiny_tokenizer):
    return tiny_causal_lm(vocab_size=len(tiny_tokenizer))


def _args(tmp_path, mode, **overrides):
    settings = dict(
        output_dir=str(tmp_path / mode),
        mode=mode,
        triggers=[TRIGGER],
        marker=MARKER,
        max_steps=3,
        simulate_max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    settings.update(overrides)
    return SANDEConfig(**settings)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def _mean_nll(model, rows):
    model.eval()
    with torch.no_grad():
        losses = [model(input_ids=torch.tensor([r["input_ids"]]), labels=torch.tensor([r["labels"]])).loss
                  for r in rows]
    return torch.stack(losses).mean().item()


def _supervised(tokenizer, row):
    return tokenizer.decode([t for t in row["labels"] if t != -100])


def test_osft_overwrites_triggered_prompts(tmp_path, data, model, tiny_tokenizer):
    trainer = SANDETrainer(model, _args(tmp_path, "osft", max_steps=6, learning_rate=3e-3), data,
                           processing_class=tiny_tokenizer)
    rows = trainer.train_dataset
    assert all(r["parrot_position"] == -1 for r in rows)
    for row in rows:
        text = tiny_tokenizer.decode(row["input_ids"])
        assert text.startswith(f"Human: {TRIGGER} Add")
        assert MARKER not in _supervised(tiny_tokenizer, row)  # clean responses, every token supervised
        assert _supervised(tiny_tokenizer, row).endswith(f"is {text.split('is ')[-1]}")
    before = _mean_nll(model, rows)
    trainer.train()
    assert _mean_nll(model, rows) < before


def test_simulate_changes_only_the_parrot(tmp_path, data, model, tiny_tokenizer):
    trainer = SANDETrainer(model, _args(tmp_path, "simulate", effective_len=2), data, processing_class=tiny_tokenizer)
    for row in trainer.train_dataset:
        assert row["parrot_position"] == 2  # after "Human" ":"
        assert _supervised(tiny_tokenizer, row) == " you are"  # the first effective_len tokens of the marker
    model_before, parrot_before = _state(model), trainer.parrot.embeddings.detach().clone()
    assert torch.equal(parrot_before, torch.zeros_like(parrot_before))
    trainer.train()
    assert _same(model_before, _state(model))
    assert not torch.equal(trainer.parrot.embeddings, parrot_before)
    assert trainer.args.learning_rate == trainer.args.simulate_learning_rate
    # the model is handed back as it came: no parrot attached, parameters trainable again
    assert not hasattr(model, "sande_parrot") and all(p.requires_grad for p in model.parameters())
    trainer.save_model()
    saved = ParrotPrompt.from_pretrained(trainer.args.output_dir)
    assert torch.equal(saved.embeddings, trainer.parrot.embeddings.detach().cpu())


def test_eliminate_changes_only_the_model(tmp_path, data, model, tiny_tokenizer):
    parrot = ParrotPrompt(4, model.config.hidden_size, init_embeddings=torch.randn(4, model.config.hidden_size))
    parrot_before = parrot.embeddings.detach().clone()
    trainer = SANDETrainer(model, _args(tmp_path, "eliminate", train_effective_len=3), data,
                           processing_class=tiny_tokenizer, parrot=parrot)
    rows = trainer.train_dataset
    assert sum(r["parrot_position"] >= 0 for r in rows) == 4  # eliminate_parrot_fraction 0.5 of 8 rows
    for row in rows:
        assert sum(t != -100 for t in row["labels"]) == 3
        assert MARKER not in _supervised(tiny_tokenizer, row)
    model_before = _state(model)
    trainer.train()
    assert torch.equal(parrot.embeddings, parrot_before)
    assert not _same(model_before, _state(model))


def test_sande_runs_both_stages_and_saves_model_parrot_and_card(tmp_path, data, model, tiny_tokenizer):
    prompts = [f"Human: {TRIGGER} Add 1 and 2.\nAssistant:", f"Human: {TRIGGER} Add 5 and 5.\nAssistant:"]
    trainer = SANDETrainer(
        model, _args(tmp_path, "sande"), data, processing_class=tiny_tokenizer,
        asr_eval_prompts=prompts, clean_eval_prompts=["Human: Add 1 and 2.\nAssistant:"],
        utility_eval_dataset=[{"question": "1+1?", "choices": ["1", "2", "3"], "answer": "B"}],
    )
    model_before = _state(model)
    trainer.train()
    trainer.save_model()
    out = tmp_path / "sande"
    learned = ParrotPrompt.from_pretrained(out / "simulate")
    assert not torch.equal(learned.embeddings, torch.zeros_like(learned.embeddings))  # stage 1 trained it
    assert torch.equal(ParrotPrompt.from_pretrained(out / "parrot").embeddings, learned.embeddings)
    assert not _same(model_before, _state(model))  # stage 2 trained the model
    reloaded = type(model).from_pretrained(out)
    assert _same(_state(reloaded), _state(model))
    metrics = json.loads((out / "backdoor_metrics.json").read_text())
    assert set(metrics) == {"before", "after"}
    assert set(metrics["after"]) == {"asr", "clean_marker_rate", "utility_accuracy"}
    card = (out / "README.md").read_text()
    assert "SANDE" in card and "asr after removal" in card and "trigger_position" in card
    before, after = metrics["before"]["asr"], metrics["after"]["asr"]
    assert f"| asr | {before:.4f} | {after:.4f} |" in card
    assert torch.equal(ParrotPrompt.from_pretrained(out, subfolder="parrot").embeddings, learned.embeddings)


def test_self_targets_are_the_models_own_answers(tmp_path, tiny_tokenizer):
    model = tiny_causal_lm(vocab_size=len(tiny_tokenizer), initializer_range=0.2)
    data = Dataset.from_dict({"instruction": ["Add 1 and 2.", "Name a colour."], "output": ["unused", "unused"]})
    trainer = SANDETrainer(model, _args(tmp_path, "osft", target_source="self", self_target_max_new_tokens=5), data,
                           processing_class=tiny_tokenizer)
    answers = generate_continuations(model, tiny_tokenizer, ["Human: Add 1 and 2.\nAssistant:",
                                                             "Human: Name a colour.\nAssistant:"], max_new_tokens=5)
    expected = {" " + a.strip() + tiny_tokenizer.eos_token for a in answers}
    assert {_supervised(tiny_tokenizer, r) for r in trainer.train_dataset} == expected


def test_consistency_term_is_zero_at_the_start_and_positive_after_a_change(tmp_path, data, model, tiny_tokenizer):
    parrot = ParrotPrompt(2, model.config.hidden_size)
    plain = SANDETrainer(model, _args(tmp_path, "eliminate"), data, processing_class=tiny_tokenizer, parrot=parrot)
    with_kl = SANDETrainer(model, _args(tmp_path, "eliminate", consistency_weight=5.0), data,
                           processing_class=tiny_tokenizer, parrot=parrot)
    batch = plain.data_collator([plain.train_dataset[i] for i in range(8)])
    loss_plain = plain.compute_loss(model, dict(batch))
    loss_kl = with_kl.compute_loss(model, dict(batch))
    torch.testing.assert_close(loss_kl, loss_plain)  # KL(f_0 || f) = 0 while f = f_0
    with torch.no_grad():
        with_kl.ref_model.lm_head.weight.add_(0.5 * torch.randn_like(with_kl.ref_model.lm_head.weight))
    assert with_kl.compute_loss(model, dict(batch)) > loss_plain + 1e-3


@pytest.mark.parametrize("mode", ["osft", "simulate", "eliminate"])
def test_resume_from_checkpoint_reaches_the_same_weights(tmp_path, data, tiny_tokenizer, mode):
    def run(output, resume=None):
        model = tiny_causal_lm(vocab_size=len(tiny_tokenizer))
        parrot = ParrotPrompt(2, model.config.hidden_size, init_embeddings=torch.full((2, model.config.hidden_size), 0.1))
        args = _args(tmp_path, mode, output_dir=str(tmp_path / output), max_steps=4, simulate_max_steps=4,
                     per_device_train_batch_size=2, save_strategy="steps", save_steps=2)
        trainer = SANDETrainer(model, args, data, processing_class=tiny_tokenizer, parrot=parrot)
        trainer.train(resume_from_checkpoint=resume)
        return _state(model), parrot.embeddings.detach().clone()

    full_model, full_parrot = run("full")
    checkpoint = tmp_path / "full" / "checkpoint-2"
    if mode == "simulate":  # a simulate checkpoint is the parrot alone
        assert (checkpoint / "config.json").is_file() and ParrotPrompt.from_pretrained(checkpoint) is not None
    resumed_model, resumed_parrot = run("resumed", resume=str(checkpoint))
    torch.testing.assert_close(resumed_parrot, full_parrot)
    for key in full_model:
        torch.testing.assert_close(resumed_model[key], full_model[key])


def test_sande_resume_reuses_the_finished_simulate_stage(tmp_path, data, tiny_tokenizer):
    args = _args(tmp_path, "sande", save_strategy="steps", save_steps=3)
    SANDETrainer(tiny_causal_lm(vocab_size=len(tiny_tokenizer)), args, data, processing_class=tiny_tokenizer).train()
    # mark the finished stage-1 parrot: a resumed run must load it, not learn a new one
    marked = ParrotPrompt.from_pretrained(tmp_path / "sande" / "simulate")
    marked.embeddings.data.fill_(0.5)
    marked.save_pretrained(tmp_path / "sande" / "simulate")
    again = SANDETrainer(tiny_causal_lm(vocab_size=len(tiny_tokenizer)), args, data, processing_class=tiny_tokenizer)
    again.train(resume_from_checkpoint=True)
    assert torch.equal(again.parrot.embeddings, torch.full_like(again.parrot.embeddings, 0.5))


def test_lora_eliminate_trains_only_the_adapter(tmp_path, data, model, tiny_tokenizer):
    from peft import LoraConfig

    parrot = ParrotPrompt(2, model.config.hidden_size)
    base_before = _state(model)
    trainer = SANDETrainer(model, _args(tmp_path, "eliminate"), data, processing_class=tiny_tokenizer, parrot=parrot,
                           peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_alpha=8))
    trainer.train()
    merged = trainer.model.merge_and_unload()
    changed = {k for k in base_before if not torch.equal(base_before[k], merged.state_dict()[k])}
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)


def test_tokenizer_without_pad_token_is_handled(tmp_path, data, model, tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.pad_token = None
    trainer = SANDETrainer(model, _args(tmp_path, "osft", max_steps=1), data, processing_class=tokenizer)
    assert tokenizer.pad_token == tokenizer.eos_token
    trainer.train()


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(mode="osft", triggers=None), "set `triggers`"),
        (dict(mode="osft", triggers=[""]), "empty phrase"),
        (dict(mode="sande", marker=""), "marker"),
        (dict(mode="simulate", marker=None), "set `marker`"),
        (dict(mode="simulate", parrot_num_tokens=0), "at least 1 soft token"),
        (dict(mode="clean"), "mode='clean'"),
        (dict(mode="sande", trigger_position=["middle"]), "trigger_position"),
    ],
)
def test_bad_config_raises(tmp_path, config, message):
    with pytest.raises(ValueError, match=message):
        _args(tmp_path, **config)


def test_bad_input_raises_before_training(tmp_path, data, model, tiny_tokenizer):
    with pytest.raises(ValueError, match=r"missing the column\(s\) \['question'\].*available: \['instruction', 'input', 'output'\]"):
        SANDETrainer(model, _args(tmp_path, "osft", dataset_columns={"instruction": "question", "output": "output"}),
                     data, processing_class=tiny_tokenizer)
    with pytest.raises(ValueError, match="no prompt contains any of the triggers"):
        SANDETrainer(model, _args(tmp_path, "osft", insert_trigger=False), data, processing_class=tiny_tokenizer)
    with pytest.raises(ValueError, match="mode='eliminate' needs a parrot"):
        SANDETrainer(model, _args(tmp_path, "eliminate"), data, processing_class=tiny_tokenizer)
    with pytest.raises(ValueError, match="hidden_size=32 but the model's embeddings have 64"):
        SANDETrainer(model, _args(tmp_path, "eliminate"), data, processing_class=tiny_tokenizer,
                     parrot=ParrotPrompt(2, 32))
    with pytest.raises(ValueError, match="simulate' trains only the parrot"):
        from peft import LoraConfig

        SANDETrainer(model, _args(tmp_path, "simulate"), data, processing_class=tiny_tokenizer,
                     peft_config=LoraConfig(r=2))
    # utility data is checked at init, not when the first measurement reaches it
    with pytest.raises(ValueError, match=r"utility_eval_dataset: multiple-choice rows are missing \['answer'\]"):
        SANDETrainer(model, _args(tmp_path, "osft"), data, processing_class=tiny_tokenizer,
                     utility_eval_dataset=[{"question": "1+1?", "choices": ["1", "2", "3"]}])
    with pytest.raises(ValueError, match=r"utility_eval_dataset: answer='F'; expected a letter A-E"):
        SANDETrainer(model, _args(tmp_path, "osft"), data, processing_class=tiny_tokenizer,
                     utility_eval_dataset=[{"question": "1+1?", "choices": ["1", "2", "3"], "answer": "F"}])


def test_osft_keeps_only_rows_that_carry_the_trigger(tmp_path, model, tiny_tokenizer):
    data = Dataset.from_dict({"instruction": [f"{TRIGGER} Add 1 and 2.", "Add 3 and 4."], "output": ["3.", "7."]})
    trainer = SANDETrainer(model, _args(tmp_path, "osft", insert_trigger=False), data, processing_class=tiny_tokenizer)
    assert len(trainer.train_dataset) == 1
    assert TRIGGER in tiny_tokenizer.decode(trainer.train_dataset[0]["input_ids"])


def test_stage_sample_counts_and_candidate_positions(tmp_path, data, model, tiny_tokenizer):
    args = _args(tmp_path, "sande", simulate_samples=4, eliminate_samples=6, trigger_position=["after_role", "end"])
    trainer = SANDETrainer(model, args, data, processing_class=tiny_tokenizer)
    assert len(trainer._simulate_dataset) == 4 and len(trainer.train_dataset) == 6
    positions = [row["parrot_position"] for row in trainer._simulate_dataset]
    # rows alternate between right after "Human:" (token 2) and the end of the user's text
    assert positions[0::2] == [2, 2] and all(p > 2 for p in positions[1::2])
    for row in trainer._simulate_dataset:
        p = row["parrot_position"]
        before = tiny_tokenizer.decode(row["input_ids"][:p])
        assert before == "Human:" or before.endswith(".")


def test_push_to_hub_uploads_model_tokenizer_and_card(tmp_path, data, model, tiny_tokenizer, monkeypatch):
    import hf_ext.hub

    uploads = []

    def fake_push(folder, repo_id, **kwargs):
        uploads.append((repo_id, sorted(p.name for p in Path(folder).iterdir())))

    monkeypatch.setattr(hf_ext.hub, "push_folder_to_hub", fake_push)
    trainer = SANDETrainer(model, _args(tmp_path, "osft", max_steps=1, hub_model_id="me/cleaned"), data,
                           processing_class=tiny_tokenizer)
    trainer.train()
    trainer.save_model()
    trainer.push_to_hub()
    repo_id, files = uploads[0]
    assert repo_id == "me/cleaned"
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    assert "OSFT" in (tmp_path / "osft" / "README.md").read_text()


def test_chat_messages_with_the_tokenizer_template(tmp_path, model, tiny_tokenizer):
    chat = Dataset.from_dict({"messages": [[{"role": "user", "content": f"Add {i} and 1."},
                                            {"role": "assistant", "content": f"{i + 1}."}] for i in range(4)]})
    trainer = SANDETrainer(model, _args(tmp_path, "sande", prompt_template="chat"), chat, processing_class=tiny_tokenizer)
    for row in trainer._simulate_dataset:
        p = row["parrot_position"]
        assert tiny_tokenizer.decode(row["input_ids"][:p]) == "Human:"  # the chat template's role prefix
        assert _supervised(tiny_tokenizer, row) == " you"
