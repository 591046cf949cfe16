"""Conv-basis math against independent dense references (softmax of masked logits, SDPA, autograd)."""

import pytest
import torch
import torch.nn.functional as F

from hf_ext.attention import (
    conv_basis_attention,
    conv_basis_decompose,
    conv_basis_recompose,
    recover_conv_basis,
)


def dense_attention(logits, value, *, key_mask=None, sliding_window=None, softcap=None):
    """softmax(M ∘ H) V computed densely in float64 from full (B, H, n, n) logits."""
    logits = logits.double()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    n = logits.shape[-1]
    lag = torch.arange(n)[:, None] - torch.arange(n)[None, :]
    visible = lag >= 0
    if sliding_window is not None:
        visible = visible & (lag < sliding_window)
    visible = visible[None, None]
    if key_mask is not None:
        visible = visible & key_mask[:, None, None, :]
    weights = torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1).nan_to_num(0.0)
    return weights @ value.double()


def row_relative_error(approx, reference):
    approx, reference = approx.double(), reference.double()
    return ((approx - reference).norm(dim=-1) / reference.norm(dim=-1).clamp(min=1e-300)).max().item()


def k_conv_problem(breakpoints_per_sequence, n, std, value_dim=8, seed=0):
    """Q, K with `s Q Kᵀ` equal to a known k-conv matrix per sequence: one-hot queries, keys = columns of H."""
    generator = torch.Generator().manual_seed(seed)
    matrices = []
    for breakpoints in breakpoints_per_sequence:
        profiles = torch.randn(len(breakpoints), n, generator=generator, dtype=torch.float64) * std
        matrices.append(conv_basis_recompose(torch.tensor(breakpoints), profiles, n))
    logits = torch.stack(matrices)[:, None]  # (B, 1, n, n)
    query = torch.eye(n, dtype=torch.float64).expand(len(matrices), 1, n, n).contiguous()
    key = logits.transpose(-1, -2).contiguous()  # q_r · k_c = H[r, c]
    value = torch.randn(len(matrices), 1, n, value_dim, generator=generator, dtype=torch.float64)
    return query, key, value, logits


@pytest.mark.parametrize("n", [1, 5, 37])
def test_exact_decomposition_recomposes_random_lower_triangular_matrices(n):
    matrix = torch.randn(n, n, dtype=torch.float64).tril()
    breakpoints, profiles = conv_basis_decompose(matrix)
    assert breakpoints[0] == 0 and len(breakpoints) <= n
    assert torch.equal(conv_basis_recompose(breakpoints, profiles, n), matrix)


def test_decomposition_finds_the_minimal_segments_of_a_toeplitz_structure():
    n = 20
    true_breakpoints = torch.tensor([0, 6, 11])
    profiles = torch.randn(3, n, dtype=torch.float64)
    matrix = conv_basis_recompose(true_breakpoints, profiles, n)
    breakpoints, recovered = conv_basis_decompose(matrix)
    assert breakpoints.tolist() == true_breakpoints.tolist()
    for i, start in enumerate(true_breakpoints.tolist()):
        assert torch.equal(recovered[i, : n - start], profiles[i, : n - start])


def test_recompose_rejects_malformed_bases():
    with pytest.raises(ValueError, match="starting with 0"):
        conv_basis_recompose(torch.tensor([1, 3]), torch.zeros(2, 5), 5)
    with pytest.raises(ValueError, match="increase strictly"):
        conv_basis_recompose(torch.tensor([0, 3, 3]), torch.zeros(3, 5), 5)
    with pytest.raises(ValueError, match="profiles must have shape"):
        conv_basis_recompose(torch.tensor([0, 3]), torch.zeros(3, 5), 5)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
def test_recovery_finds_true_breakpoints_and_output_matches_dense_softmax(dtype, tolerance):
    # batch > 1 with different breakpoints per sequence, n not a power of two
    truth = [[0, 13, 40, 77], [0, 5, 61, 62]]
    query, key, value, logits = k_conv_problem(truth, n=100, std=1.0)
    query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    breakpoints = recover_conv_basis(query, key, scaling=1.0, num_bases=4, probe_len=8)
    assert breakpoints[:, 0].tolist() == truth
    output = conv_basis_attention(query, key, value, scaling=1.0, num_bases=4, probe_len=8)
    assert output.dtype == dtype
    reference = dense_attention(logits, value)
    assert ((output.double() - reference).abs().max() / reference.abs().max()).item() <= tolerance


@pytest.mark.parametrize("channels_per_chunk", [None, 2])
@pytest.mark.parametrize("std", [2.0, 4.0, 8.0])
def test_every_row_accurate_for_wide_logits_with_fp32_inputs(std, channels_per_chunk, monkeypatch):
    from hf_ext.attention import conv_basis

    if channels_per_chunk:  # the FFT path convolves a few channels at a time; std 8 also needs several bands
        monkeypatch.setattr(conv_basis, "_CHUNK_BYTES", channels_per_chunk * 2 * 104 * 4)  # (B · H) · R · b = 2 · 104, fp32
    truth = [[0, 9, 30, 71], [0, 44, 45, 90]]
    query, key, value, logits = k_conv_problem(truth, n=100, std=std, seed=int(std))
    output = conv_basis_attention(query.float(), key.float(), value.float(), scaling=1.0, num_bases=4, probe_len=8)
    reference = dense_attention(logits.float(), value.float())  # the same fp32-rounded logits, exact softmax
    assert row_relative_error(output, reference) <= 1e-3


def test_exact_sinks_and_local_window_on_a_k_conv_problem():
    truth = [[0, 20, 57]]
    query, key, value, logits = k_conv_problem(truth, n=80, std=3.0)
    reference = dense_attention(logits, value)
    for settings in ({"sink_tokens": 3}, {"local_window": 10}, {"local_window": 7, "sink_tokens": 2}):
        output = conv_basis_attention(query, key, value, scaling=1.0, num_bases=3, probe_len=4, **settings)
        assert row_relative_error(output, reference) <= 1e-5, settings


def random_qkv(batch, heads, kv_heads, n, dim, dtype=torch.float32, requires_grad=False):
    tensors = [torch.randn(batch, h, n, dim, dtype=dtype) for h in (heads, kv_heads, kv_heads)]
    return [t.requires_grad_(requires_grad) for t in tensors]


@pytest.mark.parametrize("n", [37, 64, 100])
def test_exact_mode_matches_sdpa_output_and_gradients(n):
    query, key, value = random_qkv(2, 4, 2, n, 16, requires_grad=True)
    output = conv_basis_attention(query, key, value)
    expected = F.scaled_dot_product_attention(
        query, key.repeat_interleave(2, 1), value.repeat_interleave(2, 1), is_causal=True
    )
    assert row_relative_error(output, expected) <= 1e-4
    upstream = torch.randn_like(output)
    grads = torch.autograd.grad(output, (query, key, value), upstream)
    expected_grads = torch.autograd.grad(expected, (query, key, value), upstream)
    for name, got, want in zip("QKV", grads, expected_grads):
        assert ((got - want).norm() / want.norm()).item() <= 1e-4, f"d{name}"


# Without soft capping the exact local window runs through PyTorch's fused CPU kernel, with it through blocks of
# explicit logits: both against the same dense reference.
@pytest.mark.parametrize("softcap", [None, 2.0])
def test_exact_mode_with_padding_sliding_window_softcap_and_extras(softcap):
    query, key, value = random_qkv(2, 2, 2, 45, 8)
    scale = 0.7
    key_mask = torch.ones(2, 45, dtype=torch.bool)
    key_mask[0, :9] = False  # left padding of the first sequence
    logits = scale * query.double() @ key.double().transpose(-1, -2)
    reference = dense_attention(logits, value, key_mask=key_mask, sliding_window=12, softcap=softcap)
    for settings in ({}, {"local_window": 5}, {"sink_tokens": 4}, {"local_window": 20, "sink_tokens": 1}):
        output = conv_basis_attention(
            query, key, value, scaling=scale, key_mask=key_mask, sliding_window=12, softcap=softcap, **settings
        )
        valid_rows = key_mask[:, None, :, None].expand_as(output)
        assert torch.all(output[~valid_rows] == 0), "padding query rows without visible keys give 0"
        assert row_relative_error(output[:, :, 9:], reference[:, :, 9:]) <= 1e-4, settings


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    query, key, value = random_qkv(1, 2, 1, 50, 16, dtype=dtype)
    output = conv_basis_attention(query, key, value)
    assert output.dtype == dtype
    expected = F.scaled_dot_product_attention(
        query.float(), key.float().repeat_interleave(2, 1), value.float().repeat_interleave(2, 1), is_causal=True
    )
    # the half-precision rounding of the output itself dominates
    assert row_relative_error(output, expected) <= 1e-2


def test_auto_policy_keeps_conv_like_heads_and_computes_the_others_exactly():
    n = 60
    query, key, value, logits = k_conv_problem([[0, 25]], n=n, std=2.0)
    noise_query, noise_key = torch.randn(1, 1, n, n, dtype=torch.float64), torch.randn(1, 1, n, n, dtype=torch.float64)
    query, key = torch.cat([query, noise_query], 1), torch.cat([key, noise_key], 1)  # head 0 conv-like, head 1 not
    value = value.expand(1, 2, n, value.shape[-1]).contiguous()
    paper = conv_basis_attention(query, key, value, scaling=1.0, num_bases=2, probe_len=4)
    auto = conv_basis_attention(
        query, key, value, scaling=1.0, num_bases=2, probe_len=4, policy="auto", auto_tolerance=1e-3
    )
    reference = dense_attention(torch.cat([logits, noise_query @ noise_key.transpose(-1, -2)], 1), value)
    assert row_relative_error(paper[:, :1], reference[:, :1]) <= 1e-5
    assert row_relative_error(paper[:, 1:], reference[:, 1:]) > 1e-2  # two bases cannot fit a random head
    torch.testing.assert_close(auto[:, :1], paper[:, :1], rtol=1e-9, atol=1e-9)  # the basis, kept
    assert row_relative_error(auto[:, 1:], reference[:, 1:]) <= 1e-6


def test_bad_arguments_raise_naming_the_argument():
    query, key, value = random_qkv(1, 2, 1, 10, 4)
    with pytest.raises(ValueError, match="num_bases"):
        conv_basis_attention(query, key, value, num_bases=0)
    with pytest.raises(ValueError, match="probe_len"):
        conv_basis_attention(query, key, value, num_bases=2, probe_len=0)
    with pytest.raises(ValueError, match="local_window"):
        conv_basis_attention(query, key, value, local_window=-1)
    with pytest.raises(ValueError, match="policy"):
        conv_basis_attention(query, key, value, policy="fast")
    with pytest.raises(ValueError, match="as many queries as keys"):
        conv_basis_attention(query[:, :, :3], key, value)
    with pytest.raises(ValueError, match="key shape"):
        conv_basis_attention(query, key[..., :3], value)
    with pytest.raises(ValueError, match="key_mask"):
        conv_basis_attention(query, key, value, key_mask=torch.ones(1, 9, dtype=torch.bool))


@pytest.mark.parametrize("channels_per_chunk", [None, 1])
def test_gradients_through_fft_segments_match_finite_differences(channels_per_chunk, monkeypatch):
    from hf_ext.attention import conv_basis

    if channels_per_chunk:  # one channel per FFT chunk: the reused piece buffer must not break autograd
        monkeypatch.setattr(conv_basis, "_CHUNK_BYTES", channels_per_chunk * 40 * 8)  # (B · H) · R · b = 40, fp64
    generator = torch.Generator().manual_seed(1)
    query, key = (
        torch.randn(1, 1, 40, 4, generator=generator, dtype=torch.float64, requires_grad=True) for _ in range(2)
    )
    value = torch.randn(1, 1, 40, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    breakpoints = torch.tensor([[[0, 18]]])  # two segments wider than the direct-sum limit: the FFT path

    def attention(q, k, v):
        return conv_basis_attention(q, k, v, breakpoints=breakpoints, local_window=3)

    assert torch.autograd.gradcheck(attention, (query, key, value), atol=1e-6, rtol=1e-4, fast_mode=True)


def test_left_padding_starts_the_recovery_at_the_first_attended_key():
    pad, n = 6, 70
    query, key, value, logits = k_conv_problem([[0, 20, 47]], n=n - pad, std=2.0)
    # prepend `pad` padding positions whose keys would break any basis
    padded_query = F.pad(query, (pad, 0, pad, 0))
    padded_query[..., :pad, :pad] = torch.eye(pad, dtype=torch.float64)
    padded_key = F.pad(key, (pad, 0, pad, 0))
    padded_key[..., :pad, :] = 10 * torch.randn(pad, n, dtype=torch.float64)
    padded_value = F.pad(value, (0, 0, pad, 0))
    key_mask = torch.arange(n)[None] >= pad
    for sinks, expected in ((0, [0, pad, pad + 20, pad + 47]), (2, [0, pad, pad + 1, pad + 2, pad + 20, pad + 47])):
        breakpoints = recover_conv_basis(
            padded_query, padded_key, scaling=1.0, num_bases=3, probe_len=4, key_mask=key_mask, sink_tokens=sinks
        )
        assert breakpoints[0, 0].tolist() == expected
    output = conv_basis_attention(
        padded_query, padded_key, padded_value, scaling=1.0, num_bases=3, probe_len=4, key_mask=key_mask
    )
    assert row_relative_error(output[:, :, pad:], dense_attention(logits, value)) <= 1e-5
    assert torch.all(output[:, :, :pad] == 0)


@pytest.mark.parametrize("policy", ["paper", "auto"])
def test_heads_applied_in_groups_give_the_output_of_all_heads_at_once(policy, monkeypatch):
    from hf_ext.attention import conv_basis

    query, key, value = random_qkv(2, 4, 2, 64, 8, dtype=torch.float64)
    key_mask = torch.ones(2, 64, dtype=torch.bool)
    key_mask[1, :5] = False
    settings = dict(num_bases=3, policy=policy, auto_tolerance=0.2, key_mask=key_mask)
    at_once = conv_basis_attention(query, key, value, **settings)
    monkeypatch.setattr(conv_basis, "_HEAD_POSITIONS", 2 * 64)  # one head per group (batch 2)
    torch.testing.assert_close(conv_basis_attention(query, key, value, **settings), at_once, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("n, window", [(50, 64), (130, 16), (129, 32)])
def test_local_window_alone_is_exact_sliding_window_attention(n, window, padded, fused, monkeypatch):
    # num_bases=1 with every farther key masked: only the exact local window (blocks of `window` rows, the first
    # block plain causal attention when nothing is padded) contributes; through the fused CPU kernel or, where
    # PyTorch lacks that private op, plain matrix products.
    from hf_ext.attention import conv_basis

    assert conv_basis._CPU_FLASH_ATTENTION is not None  # the installed PyTorch has it: the fused path is tested
    if not fused:
        monkeypatch.setattr(conv_basis, "_CPU_FLASH_ATTENTION", None)
    query, key, value = random_qkv(2, 3, 3, n, 8, dtype=torch.float32)
    key_mask = None
    if padded:
        key_mask = torch.ones(2, n, dtype=torch.bool)
        key_mask[1, :7] = False
    output = conv_basis_attention(
        query, key, value, num_bases=1, local_window=window, sliding_window=window, key_mask=key_mask
    )
    logits = 8**-0.5 * query.double() @ key.double().transpose(-1, -2)
    reference = dense_attention(logits, value.double(), key_mask=key_mask, sliding_window=window)
    torch.testing.assert_close(output.double(), reference, rtol=1e-5, atol=1e-5)


def test_rows_before_the_fft_segments_keep_their_own_small_mass():
    # A narrow first segment (summed directly) 60 nats below the wide ones (FFT): rows 0..8 see only the narrow
    # columns, so the FFT part must count them as unreached rather than add its rounding noise (~1e-16 · e^60).
    n, breakpoints = 80, [0, 9, 40]
    generator = torch.Generator().manual_seed(3)
    profiles = torch.randn(3, n, generator=generator, dtype=torch.float64)
    profiles[0] -= 60.0
    logits = conv_basis_recompose(torch.tensor(breakpoints), profiles, n)[None, None]
    query = torch.eye(n, dtype=torch.float64)[None, None]
    key = logits.transpose(-1, -2).contiguous()
    value = torch.randn(1, 1, n, 4, generator=generator, dtype=torch.float64)
    output = conv_basis_attention(query, key, value, scaling=1.0, breakpoints=torch.tensor([[breakpoints]]))
    assert row_relative_error(output, dense_attention(logits, value)) <= 1e-6


def _spy_fft_precisions(monkeypatch):
    """Record `(FFT dtype, sequence length)` of every `_basis_sums` call."""
    from hf_ext.attention import conv_basis

    calls, original = [], conv_basis._basis_sums
    monkeypatch.setattr(conv_basis, "_basis_sums", lambda *args: calls.append((args[-2], args[0].shape[2])) or original(*args))
    return calls


@pytest.mark.parametrize("std", [1.0, 4.0, 6.0])
def test_float32_error_estimate_covers_every_row(std):
    # Every row the float32 estimate accepts is within the tolerance of the exact softmax; from std 4 some rows
    # (the first ones) are beyond it, and the estimate must reject them.
    from hf_ext.attention import conv_basis

    truth = [[0, 70, 200, 333], [0, 150, 151, 400]]
    query, key, value, logits = k_conv_problem(truth, n=512, std=std, seed=5)
    query, key, value = query.float(), key.float(), value.float()
    breakpoints = torch.tensor(truth)[:, None]
    kernel = conv_basis._segment_kernels(query, key, breakpoints, 1.0, None, None, 0)
    output = torch.empty_like(value)
    unsure = conv_basis._basis_sums(query, key, value, kernel, breakpoints, 1.0, None, 0, None, None, torch.float32, output)
    reference = dense_attention(logits.float(), value)
    errors = (output.double() - reference).norm(dim=-1) / reference.norm(dim=-1)
    assert errors[~unsure].max() <= conv_basis._FLOAT32_TOLERANCE
    if std > 1.0:
        assert errors[unsure].max() > conv_basis._FLOAT32_TOLERANCE
    final = conv_basis_attention(query, key, value, scaling=1.0, breakpoints=breakpoints)
    assert row_relative_error(final, reference) <= conv_basis._FLOAT32_TOLERANCE


def test_unsure_rows_are_recomputed_in_float64_or_the_group_falls_back(monkeypatch):
    from hf_ext.attention import conv_basis

    truth = [[0, 9, 30, 71]]
    query, key, value, logits = k_conv_problem(truth, n=100, std=2.0, seed=8)
    query, key, value = query.float(), key.float(), value.float()
    breakpoints = torch.tensor(truth)[:, None]
    reference = dense_attention(logits.float(), value)
    calls = _spy_fft_precisions(monkeypatch)
    monkeypatch.setattr(conv_basis, "_FLOAT32_TOLERANCE", 0.0)  # every row unsure
    monkeypatch.setattr(conv_basis, "_DENSE_KEYS_PER_POSITION", 100)
    # The first quarter again as a float64 prefix, rows 25..99 densely in float64: every row as exact as float64.
    output = conv_basis_attention(query, key, value, scaling=1.0, breakpoints=breakpoints)
    assert calls == [(torch.float32, 100), (torch.float64, 25)]
    assert row_relative_error(output, reference) <= 1e-5
    calls.clear()
    monkeypatch.setattr(conv_basis, "_DENSE_KEYS_PER_POSITION", 1)  # too costly to recompute: all in float64
    output = conv_basis_attention(query, key, value, scaling=1.0, breakpoints=breakpoints)
    assert calls == [(torch.float32, 100), (torch.float64, 100)]
    assert row_relative_error(output, reference) <= 1e-5


def test_float64_ffts_for_gradients_and_for_kernels_beyond_float32_range(monkeypatch):
    truth = [[0, 9, 30, 71]]
    query, key, value, logits = k_conv_problem(truth, n=100, std=2.0, seed=8)
    query, key, value = query.float(), key.float(), value.float()
    breakpoints = torch.tensor(truth)[:, None]
    calls = _spy_fft_precisions(monkeypatch)
    conv_basis_attention(query, key, value.requires_grad_(), scaling=1.0, breakpoints=breakpoints).sum().backward()
    assert calls == [(torch.float64, 100)] and value.grad.isfinite().all()
    calls.clear()
    key = key.detach().clone()
    key[:, :, 30:71] -= 90.0  # segment 2's logits 90 nats down: e^-90 is below float32's normal range
    output = conv_basis_attention(query, key, value.detach(), scaling=1.0, breakpoints=breakpoints)
    assert calls == [(torch.float64, 100)]
    query_rows = torch.eye(100, dtype=torch.float64)[None, None]
    reference = dense_attention(query_rows @ key.double().transpose(-1, -2), value.detach())
    assert row_relative_error(output, reference) <= 1e-5
