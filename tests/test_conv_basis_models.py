"""attn_implementation="conv_basis" on tiny models of every supported architecture, loaded with from_pretrained."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import hf_ext
from hf_ext.attention import ConvBasisConfig, conv_basis_report, enable_conv_basis, save_conv_basis_model
from hf_ext.attention import integration
from hf_ext.attention.report import main as report_main
from hf_ext.testing import TINY_ARCHITECTURES, save_pretrained_to, tiny_causal_lm

EXACT = {"min_seq_len": 1}  # num_bases=None: as many bases as needed


@pytest.fixture
def conv_calls(monkeypatch):
    """Records every call that takes the convolution path."""
    calls = []
    original = integration.conv_basis_attention

    def spy(query, *args, **kwargs):
        calls.append(tuple(query.shape))
        return original(query, *args, **kwargs)

    monkeypatch.setattr(integration, "conv_basis_attention", spy)
    return calls


def saved_model(architecture, conv_basis, **overrides):
    model = tiny_causal_lm(architecture, **overrides)
    model.config.conv_basis = conv_basis
    return save_pretrained_to(model)


def left_padded_batch(seq_len=41, pad=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 512, (2, seq_len), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    input_ids[0, :pad], attention_mask[0, :pad] = 0, 0
    return input_ids, attention_mask


@pytest.mark.parametrize("architecture", TINY_ARCHITECTURES)
def test_exact_settings_match_the_reference_implementation(architecture, conv_calls):
    path = saved_model(architecture, EXACT)
    reference_impl = "eager" if architecture == "gemma2" else "sdpa"  # sdpa has no softcap
    reference = AutoModelForCausalLM.from_pretrained(path, attn_implementation=reference_impl).eval()
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="conv_basis").eval()
    assert model.config.conv_basis == EXACT
    input_ids, attention_mask = left_padded_batch()  # longer than the tiny sliding windows (32)
    with torch.no_grad():
        expected = reference(input_ids, attention_mask=attention_mask).logits
        got = model(input_ids, attention_mask=attention_mask).logits
    assert len(conv_calls) == model.config.num_hidden_layers
    valid = attention_mask.bool()
    assert ((got - expected)[valid].abs().max() / expected[valid].abs().max()).item() <= 1e-4

    prompt, prompt_mask = input_ids[:, :36], attention_mask[:, :36]  # prefill and decode beyond the window
    expected_tokens = reference.generate(prompt, attention_mask=prompt_mask, max_new_tokens=6, do_sample=False)
    tokens = model.generate(prompt, attention_mask=prompt_mask, max_new_tokens=6, do_sample=False)
    assert torch.equal(tokens, expected_tokens)


@pytest.mark.parametrize("architecture", ["llama", "gemma2"])
def test_few_bases_give_finite_outputs_and_a_reported_error(architecture):
    path = saved_model(architecture, {"num_bases": 4, "min_seq_len": 1})
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="conv_basis").eval()
    input_ids, attention_mask = left_padded_batch()
    with torch.no_grad():
        assert torch.isfinite(model(input_ids, attention_mask=attention_mask).logits).all()
    report = conv_basis_report(model, input_ids, attention_mask=attention_mask)
    config = model.config
    assert len(report.heads) == config.num_hidden_layers * config.num_attention_heads
    # 4 bases, plus one segment for the left padding of the first sequence
    assert all(0 < fit.num_bases <= 5 and fit.sampled_error > 0 for fit in report.heads)
    assert model.config._attn_implementation == "conv_basis"  # restored after the report


def test_report_of_exact_settings_shows_no_error_and_restores_the_implementation(tiny_tokenizer, tmp_path, capsys):
    model = tiny_causal_lm("llama")
    input_ids = torch.randint(3, 512, (1, 30))
    report = conv_basis_report(model, input_ids, num_bases=None, sink_tokens=2)
    assert model.config._attn_implementation == "sdpa"
    assert max(fit.sampled_error for fit in report.heads) <= 1e-5
    assert all(fit.breakpoints[:3] == [0, 1, 2] for fit in report.heads)
    assert "| layer | head |" in report.table()
    assert [row["layer"] for row in report.layer_summary()] == [0, 1]

    path = save_pretrained_to(model, tiny_tokenizer, tmp_path / "model")
    output = tmp_path / "report.json"
    argv = ["--model", str(path), "--text", "Attention is a sum of convolutions. " * 4, "--num_bases", "3"]
    assert report_main([*argv, "--output", str(output)]) == 0
    saved = json.loads(output.read_text())
    assert saved["settings"]["num_bases"] == 3 and len(saved["heads"]) == 8
    assert "| layer | head |" in capsys.readouterr().out


def test_training_step_through_the_convolution_path_lowers_the_loss(conv_calls):
    model = tiny_causal_lm("llama").train()
    enable_conv_basis(model, num_bases=4, local_window=4, min_seq_len=1)
    input_ids = torch.randint(3, 512, (2, 33))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = model(input_ids, labels=input_ids).loss
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    optimizer.step()
    with torch.no_grad():
        assert model(input_ids, labels=input_ids).loss < loss
    assert conv_calls


def test_short_sequences_decode_steps_and_dropout_use_exact_attention(conv_calls):
    model = tiny_causal_lm("llama", attention_dropout=0.5)
    enable_conv_basis(model, min_seq_len=16)
    with torch.no_grad():
        model(torch.randint(3, 512, (1, 15)))  # shorter than min_seq_len
    assert conv_calls == []
    model.generate(torch.randint(3, 512, (1, 16)), max_new_tokens=3, do_sample=False)
    assert conv_calls == [(1, 4, 16, 16)] * 2  # prefill only; the decode steps are exact
    model.train()
    model(torch.randint(3, 512, (1, 20)))  # dropout needs the weights: exact
    assert len(conv_calls) == 2


def test_output_attentions_raises_a_clear_error():
    model = enable_conv_basis(tiny_causal_lm("llama"), min_seq_len=1)
    with pytest.raises(ValueError, match="output_attentions"):
        model(torch.randint(3, 512, (1, 8)), output_attentions=True)


def test_direct_call_on_tensors_returns_the_transformers_layout():
    attention = hf_ext.ConvBasisAttention({"min_seq_len": 1})
    query, key, value = torch.randn(1, 4, 12, 8), torch.randn(1, 2, 12, 8), torch.randn(1, 2, 12, 8)
    output, weights = attention(None, query, key, value)
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(2, 1), value.repeat_interleave(2, 1), is_causal=True
    )
    assert weights is None and output.shape == (1, 12, 4, 8)
    torch.testing.assert_close(output, expected.transpose(1, 2), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "settings, key",
    [
        ({"num_bases": 0}, "num_bases"),
        ({"probe_len": 0}, "probe_len"),
        ({"local_window": -3}, "local_window"),
        ({"sink_tokens": -1}, "sink_tokens"),
        ({"policy": "fastest"}, "policy"),
        ({"num_base": 4}, "num_base"),
    ],
)
def test_bad_settings_raise_naming_the_key_before_any_attention_runs(settings, key, conv_calls):
    with pytest.raises(ValueError, match=key):
        ConvBasisConfig.from_dict(settings)
    path = saved_model("llama", settings)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="conv_basis")
    with pytest.raises(ValueError, match=key):
        model(torch.randint(3, 512, (1, 8)))
    assert conv_calls == []


def test_settings_travel_with_the_model_and_the_card(tmp_path):
    model = enable_conv_basis(tiny_causal_lm("qwen2"), num_bases=8, local_window=64)
    assert model.config._attn_implementation == "conv_basis"
    path = save_conv_basis_model(model, tmp_path / "qwen2-conv", base_model="org/tiny-qwen2")
    saved = json.loads((path / "config.json").read_text())["conv_basis"]
    assert saved == ConvBasisConfig(num_bases=8, local_window=64).to_dict()
    card = (path / "README.md").read_text()
    assert "num_bases" in card and "local_window" in card and "org/tiny-qwen2" in card
    reloaded = AutoModelForCausalLM.from_pretrained(path, attn_implementation="conv_basis")
    assert ConvBasisConfig.from_dict(reloaded.config.conv_basis) == ConvBasisConfig(num_bases=8, local_window=64)
    with pytest.raises(TypeError, match="dict"):
        ConvBasisConfig.from_dict([("num_bases", 2)])


def test_fp32_model_matches_its_fp64_run_per_layer():
    model = tiny_causal_lm("llama")
    with torch.no_grad():  # sharper attention: logits with a std of several units
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(4.0)
            layer.self_attn.k_proj.weight.mul_(4.0)
    enable_conv_basis(model, num_bases=8, min_seq_len=1)
    input_ids = torch.randint(3, 512, (1, 160))
    with torch.no_grad():
        single = model(input_ids, output_hidden_states=True).hidden_states
        double = model.double()(input_ids, output_hidden_states=True).hidden_states
    for got, want in zip(single[1:], double[1:]):
        assert ((got.double() - want).norm(dim=-1) / want.norm(dim=-1)).max().item() <= 1e-3


def test_auto_policy_falls_back_to_exact_attention_on_content_dependent_heads():
    model = tiny_causal_lm("llama")
    input_ids = torch.randint(3, 512, (1, 40))
    with torch.no_grad():
        expected = model(input_ids).logits  # sdpa
        enable_conv_basis(model, num_bases=2, policy="auto", auto_tolerance=1e-3, min_seq_len=1)
        got = model(input_ids).logits
        enable_conv_basis(model, policy="paper")
        paper = model(input_ids).logits
    assert ((paper - expected).abs().max() / expected.abs().max()).item() > 1e-3  # two bases do not fit random heads
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= 1e-4


def test_importing_hf_ext_is_cheap_and_registration_happens_when_transformers_loads():
    import subprocess
    import sys

    code = (
        "import sys, hf_ext\n"
        "print('torch' in sys.modules, 'transformers.modeling_utils' in sys.modules)\n"
        "from transformers import AttentionInterface\n"
        "from transformers.masking_utils import AttentionMaskInterface\n"
        "print('conv_basis' in AttentionInterface(), 'conv_basis' in AttentionMaskInterface())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "True", "True"]
