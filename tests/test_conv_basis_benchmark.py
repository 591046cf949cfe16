"""The conv-basis benchmark: its synthetic inputs, reference and FFT floor, and its smallest full run."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import HfArgumentParser

from hf_ext.benchmarks import conv_basis_attention as bench


def test_k_conv_inputs_have_the_returned_basis():
    query, key, value, breakpoints = bench.k_conv_inputs(300, 2, 16, 4, logit_std=3.0, seed=1)
    assert query.shape == key.shape == value.shape == (1, 2, 300, 16) and query.dtype == torch.float32
    logits = 16**-0.5 * query[0].double() @ key[0].double().transpose(-1, -2)  # (H, n, n)
    # Column j continues its segment iff H[r, j] == H[r-1, j-1] for every r >= j (the profile is shifted down).
    lower = torch.ones(299, 299, dtype=torch.bool).tril()
    differs = ((logits[:, 1:, 1:] - logits[:, :-1, :-1]).abs() > 1e-4) & lower
    starts = 1 + differs.any(dim=1).any(dim=0).nonzero().flatten()
    assert starts.tolist() == breakpoints[1:].tolist()
    assert 2.0 < float(logits[0][torch.ones(300, 300, dtype=torch.bool).tril()].std()) < 4.5


def test_fp64_reference_rows_match_sdpa():
    query, key, value = bench.gaussian_inputs(200, 2, 16, seed=0)
    rows = bench.sample_rows(200, torch.tensor([0, 50]), count=40)
    reference = bench.exact_rows_fp64(query, key, value, rows, 16**-0.5)
    sdpa = F.scaled_dot_product_attention(query, key, value, is_causal=True)
    assert bench.max_row_error(sdpa, reference, rows) < 1e-5
    assert bench.max_row_error(sdpa + 0.1, reference, rows) > 1e-2


def test_segment_fft_attention_does_the_whole_convolution():
    # The per-segment peer times real work: its output is exact attention on k-conv inputs.
    query, key, value, breakpoints = bench.k_conv_inputs(257, 2, 16, 3, logit_std=2.0, seed=2)
    kernels = bench._segment_kernels(query, key, breakpoints, 16**-0.5)
    expected = F.scaled_dot_product_attention(query, key, value, is_causal=True)
    output = bench.segment_fft_attention(value, kernels, breakpoints, torch.float64)
    assert output.shape == value.shape and output.dtype == torch.float64
    torch.testing.assert_close(output.float(), expected, rtol=1e-4, atol=1e-5)
    output32 = bench.segment_fft_attention(value, kernels, breakpoints, torch.float32)
    assert output32.dtype == torch.float32
    torch.testing.assert_close(output32, expected, rtol=1e-2, atol=1e-3)


def test_float32_per_segment_peer_loses_rows_that_ours_keeps():
    # At n = 4096 (logit std 2) whole-segment float32 FFTs lose rows of small mass; the block scheme's per-row
    # check keeps every sampled row within the 1e-4.
    n = 4096
    query, key, value, breakpoints = bench.k_conv_inputs(n, 2, 64, 8, logit_std=2.0, seed=n + 8)
    rows = bench.sample_rows(n, breakpoints)
    reference = bench.exact_rows_fp64(query, key, value, rows, 64**-0.5)
    kernels = bench._segment_kernels(query, key, breakpoints, 64**-0.5)
    peer = bench.segment_fft_attention(value, kernels, breakpoints, torch.float32)
    assert bench.max_row_error(peer, reference, rows) > 1e-2
    ours = bench.conv_basis_attention(query, key, value, num_bases=8)
    assert bench.max_row_error(ours, reference, rows) <= 1e-4


def test_fft_floor_has_the_sizes_of_the_block_scheme():
    # n = 4096 uses 16 blocks of 256; breakpoint 1000 splits block 3, 2048 falls on a block edge. Both heads go
    # in one group, and 1.5 MiB of float32 values per chunk make chunks of 48 channels: 65 = 48 + 17.
    ((kernels, chunks),) = bench.fft_floor_inputs(4096, 2, 65, torch.tensor([0, 1000, 2048]))
    assert kernels.shape == (2, 3, 16, 512) and kernels.dtype == torch.float32
    assert [pieces.shape for pieces, _ in chunks] == [(2, 16 + 1, 48, 512), (2, 16 + 1, 17, 512)]
    assert [spectra.shape for _, spectra in chunks] == [(2, 257, 16, 48), (2, 257, 16, 17)]
    assert chunks[0][1].dtype == torch.complex64
    # One head per group from n = 32768 (2^15 positions per group).
    assert len(bench.fft_floor_inputs(32768, 3, 5, torch.tensor([0]))) == 3
    bench.fft_floor(bench.fft_floor_inputs(4096, 2, 17, torch.tensor([0, 1000, 2048])))


def test_study_windows_stay_inside_single_files():
    files = torch.tensor([[0, 5], [5, 6], [6, 16]])  # files of 5, 1 and 10 tokens
    assert bench._window_starts(files, 4).tolist() == [0, 1, 6, 7, 8, 9, 10, 11, 12]
    assert bench._window_starts(files, 11).numel() == 0
    # Evaluation: non-overlapping windows aligned at each file's start, spread over all of them.
    assert bench._eval_windows(files, 3, count=10).tolist() == [0, 6, 9, 12]
    assert bench._eval_windows(files, 3, count=2).tolist() == [0, 12]
    with pytest.raises(ValueError, match="--lm_contexts 11: no held-out file is that long .* 10 tokens"):
        bench._eval_windows(files, 11, count=1)


@pytest.mark.parametrize("option", ["--lm_train_lengths", "--lm_contexts"])
def test_lm_lengths_longer_than_every_file_fail_before_training(tmp_path, option):
    lengths = {"--lm_train_lengths": "256", "--lm_contexts": "1024", option: "1000000"}
    argv = ["--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"), "--skip_speed", "--lm_files", "20"]
    for name, value in lengths.items():
        argv += [name, value]
    with pytest.raises(ValueError, match=f"{option} \\[?1000000\\]?: no .* file is that long"):
        bench.main(argv)
    assert not list(tmp_path.rglob("*.safetensors")) and not (tmp_path / "out" / "conv_basis.json").exists()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="--sizes"):
        bench.ConvBasisBenchmarkArguments(sizes=[0, 1024])
    with pytest.raises(ValueError, match="WINDOW:K"):
        bench.ConvBasisBenchmarkArguments(hybrids=["256-8"])


def test_smallest_run_writes_schema_and_small_errors(tmp_path):
    argv = [
        "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"),
        "--sizes", "1024", "--num_bases", "8", "--repeats", "1", "--hybrid_window", "128", "--gaussian_max_len", "0",
        "--lm_train_steps", "2", "--lm_tokens_per_step", "512", "--lm_train_lengths", "256", "--lm_files", "20",
        "--lm_contexts", "1024", "--lm_eval_tokens", "1024", "--paper_num_bases", "4", "--sliding_windows", "64", "1024",
        "--hybrids", "64:4", "--auto_tolerances", "0.2", "--auto_window", "64", "--auto_num_bases", "4",
    ]  # fmt: skip
    assert bench.main(argv) == 0
    report = json.loads((tmp_path / "out" / "conv_basis.json").read_text())
    markdown = (tmp_path / "out" / "conv_basis.md").read_text()
    assert markdown.startswith("# Conv-basis attention benchmark") and "loaded from `--cache_dir`" not in markdown
    assert (tmp_path / "out" / "conv_basis.png").stat().st_size > 0

    rows = report["rows"]
    assert {(r["num_bases"], r["local_window"]) for r in rows} == {(8, 0), (8, 128)}
    required = {"n", "num_bases", "local_window", "input_kind", "sdpa_seconds", "conv_basis_seconds", "speedup",
                "fft_floor_seconds", "segment_fft32_seconds", "segment_fft32_max_rel_error", "segment_fft64_seconds",
                "segment_fft64_max_rel_error", "max_rel_error", "peak_mem_mb"}  # fmt: skip
    for row in rows:
        assert required <= set(row)
        assert row["conv_basis_seconds"] > 0 and row["sdpa_seconds"] > 0
        assert row["breakpoints_recovered"] is True
        assert row["max_rel_error"] <= 1e-4  # the bar for exact k-conv inputs

    frontier = report["frontier"]
    assert {f["setting"] for f in frontier} >= {"sdpa", "paper k=4", "window w=64", "hybrid w=64 k=4"}
    for entry in frontier:
        assert set(entry) == {"setting", "context", "perplexity_ratio", "attention_speedup"}
        assert entry["perplexity_ratio"] > 0 and entry["attention_speedup"] > 0
    ratio = {f["setting"]: f["perplexity_ratio"] for f in frontier}
    assert ratio["sdpa"] == 1.0
    assert ratio["window w=1024"] == pytest.approx(1.0, abs=1e-4)  # a window covering the context is exact
    assert ratio["window w=64"] != pytest.approx(1.0, abs=1e-6)  # a narrow one is not
    perplexity = {r["setting"]: r["perplexity"] for r in report["lm"]["results"]}
    assert perplexity["paper k=4"] != perplexity["sdpa"]  # the basis runs below the default min_seq_len

    # The same settings again: the LM comes from the cache, and the report says so.
    (args,) = HfArgumentParser(bench.ConvBasisBenchmarkArguments).parse_args_into_dataclasses(argv)
    _, training = bench.train_or_load_lm(args)
    assert training["cached"] is True and training["settings"] == report["lm"]["training"]["settings"]
    report["lm"]["training"] = training
    bench.write_markdown(report, tmp_path / "again.md")
    assert "loaded from `--cache_dir`" in (tmp_path / "again.md").read_text()
