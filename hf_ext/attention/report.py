"""Fit report: how well a k-conv basis fits each attention head of a model, on given inputs.

    hf-ext conv-basis-report --model PATH --text_file notes.txt --num_bases 8 --max_length 2048
    python -m hf_ext.attention.report --model PATH --text "Some long text ..." --output report.json

For every layer and head the report gives the number of bases the recovery used and the largest
relative error of the conv-basis output on sampled rows, measured against exact attention. Each
layer sees the exact activations of the layers before it, so the errors do not compound.
"""

import dataclasses
import json
from dataclasses import dataclass, field

import torch

from .config import ConvBasisConfig
from .conv_basis import conv_basis_attention, exact_attention, recover_conv_basis, sampled_row_error
from .integration import ATTN_IMPLEMENTATION, record_attention_inputs


@dataclass
class HeadFit:
    """Fit of one head (worst case over the batch).

    Args:
        layer (`int`), head (`int`): position in the model.
        num_bases (`int`): largest number of bases recovered for this head over the batch (sink columns and
            the segment of left-padding columns included).
        breakpoints (`list[int]`): the breakpoints recovered for the first sequence of the batch.
        sampled_error (`float`): largest relative row error `‖Ỹ_r - Y_r‖ / ‖Y_r‖` over the sampled rows.
        exact_under_auto (`bool`): whether `policy="auto"` would compute this head exactly.
    """

    layer: int
    head: int
    num_bases: int
    breakpoints: list[int]
    sampled_error: float
    exact_under_auto: bool


@dataclass
class ConvBasisReport:
    """Result of `conv_basis_report`: one `HeadFit` per (layer, head), plus the settings and sequence length."""

    settings: dict
    seq_len: int
    heads: list[HeadFit] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def layer_summary(self) -> list[dict]:
        """Per layer: median and largest sampled error, mean bases, heads `"auto"` keeps on the basis."""
        summary = []
        for layer in sorted({fit.layer for fit in self.heads}):
            fits = [fit for fit in self.heads if fit.layer == layer]
            errors = torch.tensor([fit.sampled_error for fit in fits])
            summary.append(
                {
                    "layer": layer,
                    "median_error": float(errors.median()),
                    "max_error": float(errors.max()),
                    "mean_bases": sum(fit.num_bases for fit in fits) / len(fits),
                    "basis_heads": sum(not fit.exact_under_auto for fit in fits),
                    "heads": len(fits),
                }
            )
        return summary

    def table(self) -> str:
        """Markdown table, one row per (layer, head)."""
        lines = [
            f"conv-basis fit, seq_len={self.seq_len}, settings={self.settings}",
            "",
            "| layer | head | bases | sampled error | auto |",
            "| --- | --- | --- | --- | --- |",
        ]
        for fit in self.heads:
            auto = "exact" if fit.exact_under_auto else "basis"
            lines.append(f"| {fit.layer} | {fit.head} | {fit.num_bases} | {fit.sampled_error:.3g} | {auto} |")
        return "\n".join(lines)


@torch.no_grad()
def conv_basis_report(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    settings: ConvBasisConfig | dict | None = None,
    sample_rows: int = 64,
    **overrides,
) -> ConvBasisReport:
    """Measure, per layer and head, how well a conv basis fits the model's attention on `input_ids`.

    Args:
        model (`PreTrainedModel`): a causal LM whose attention goes through `AttentionInterface`. Its
            attention implementation is switched to `"conv_basis"` for the run and restored afterwards.
        input_ids (`torch.LongTensor` of shape `(B, n)`): inputs, `n >= 2`.
        attention_mask (`torch.LongTensor` of shape `(B, n)`, *optional*): padding mask.
        settings (`ConvBasisConfig` or `dict`, *optional*): the settings to evaluate; the model's
            `config.conv_basis` by default. `min_seq_len` is ignored.
        sample_rows (`int`, defaults to 64): rows per head compared with exact attention (evenly spaced, the
            last included).
        **overrides: individual settings, e.g. `num_bases=8`.

    Returns:
        `ConvBasisReport`; `report.table()` gives a readable table.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.shape[1] < 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a (batch, seq_len >= 2) tensor, got {shape}")
    if sample_rows < 1:
        raise ValueError(f"sample_rows must be >= 1, got {sample_rows}")
    base = settings if settings is not None else getattr(model.config, "conv_basis", None)
    config = ConvBasisConfig.from_dict({**ConvBasisConfig.from_dict(base).to_dict(), **overrides})
    n = input_ids.shape[1]
    rows = torch.linspace(0, n - 1, min(sample_rows, n)).round().long().unique().to(input_ids.device)
    report = ConvBasisReport(settings=config.to_dict(), seq_len=n)
    layer_counter = iter(range(10**9))

    def record(module, query, key, value, *, scaling, softcap, sliding_window, key_mask):
        layer = getattr(module, "layer_idx", None)
        layer = next(layer_counter) if layer is None else layer
        num_heads = query.shape[1]
        key, value = (t.repeat_interleave(num_heads // t.shape[1], dim=1) for t in (key, value))
        common = dict(scaling=scaling, softcap=softcap, sliding_window=sliding_window)
        window = min(config.local_window, n, sliding_window or n)
        breakpoints = recover_conv_basis(
            query, key, num_bases=config.num_bases, probe_len=config.probe_len, threshold=config.threshold,
            local_window=window, sink_tokens=config.sink_tokens, key_mask=key_mask, **common,
        )  # fmt: skip
        approx = conv_basis_attention(
            query, key, value, breakpoints=breakpoints, local_window=config.local_window, key_mask=key_mask, **common
        )
        reference = exact_attention(query[:, :, rows], key, value, key_mask=key_mask, query_positions=rows, **common)
        errors = sampled_row_error(approx[:, :, rows], reference).amax(dim=0)  # worst over the batch
        counts = (breakpoints < n).sum(-1).amax(dim=0)
        for head in range(num_heads):
            first = breakpoints[0, head]
            report.heads.append(
                HeadFit(
                    layer=int(layer),
                    head=head,
                    num_bases=int(counts[head]),
                    breakpoints=first[first < n].tolist(),
                    sampled_error=float(errors[head]),
                    exact_under_auto=bool(errors[head] > config.auto_tolerance),
                )
            )

    previous = model.config._attn_implementation
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    try:
        with record_attention_inputs(record):
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        model.set_attn_implementation(previous)
    return report


@dataclass
class ReportArguments:
    """Arguments of `hf-ext conv-basis-report`."""

    model: str = field(metadata={"help": "Path (or Hub id) of a causal LM."})
    text: str | None = field(default=None, metadata={"help": "Input text."})
    text_file: str | None = field(default=None, metadata={"help": "File with the input text."})
    max_length: int = field(default=2048, metadata={"help": "Tokens of input used."})
    num_bases: int | None = field(default=None, metadata={"help": "k (default: the model's setting)."})
    probe_len: int | None = field(default=None, metadata={"help": "T (default: the model's setting)."})
    threshold: float | None = field(default=None, metadata={"help": "Threshold (default: the model's setting)."})
    local_window: int | None = field(
        default=None, metadata={"help": "Exact local window (default: the model's setting)."}
    )
    sink_tokens: int | None = field(
        default=None, metadata={"help": "Exact sink columns (default: the model's setting)."}
    )
    sample_rows: int = field(default=64, metadata={"help": "Rows per head compared with exact attention."})
    output: str | None = field(default=None, metadata={"help": "Write the report as JSON here."})


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser

    (args,) = HfArgumentParser(ReportArguments).parse_args_into_dataclasses(args=argv)
    if (args.text is None) == (args.text_file is None):
        raise ValueError("give exactly one of --text and --text_file")
    text = args.text if args.text is not None else open(args.text_file, encoding="utf-8").read()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    input_ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=args.max_length).input_ids
    names = ("num_bases", "probe_len", "threshold", "local_window", "sink_tokens")
    overrides = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    report = conv_basis_report(model, input_ids, sample_rows=args.sample_rows, **overrides)
    print(report.table())
    print()
    for row in report.layer_summary():
        print(row)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump(report.to_dict(), handle, indent=2)
    return 0


if __name__ == "__main__":
    main()
