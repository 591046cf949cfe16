"""Settings of conv-basis attention, stored on a model config as the plain dict `config.conv_basis`."""

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .conv_basis import POLICIES


@dataclass
class ConvBasisConfig:
    r"""
    Settings of conv-basis attention. A model carries them as the dict `model.config.conv_basis`, which
    `save_pretrained` writes into `config.json` and `push_to_hub` uploads with the model.

    Parameters:
        > Parameters of the paper's method (symbols of Liang et al.)

        num_bases (`int`, *optional*):
            k, the number of convolution bases per (batch, head) after the sink columns. `None` recovers as many
            as needed, which is exact (and costs O(n² d) for the recovery).
        probe_len (`int`, *optional*, defaults to `16`):
            T, the length of the column prefix compared by the binary search.
        threshold (`float`, *optional*, defaults to `1e-4`):
            Mean absolute logit difference over the probe above which a column starts a new basis: the paper's
            ℓ1 test `‖c_j[:T] - s[:T]‖₁ > τ` with `τ = T · threshold` (the ε/δ margin of the
            non-degeneracy
            assumption). In exact mode, the largest entrywise difference still counted as equal.

        > Parameters beyond the paper

        local_window (`int`, *optional*, defaults to `0`):
            The most recent `local_window` keys of every row are attended exactly; the basis covers the farther
            ones. 0 turns it off.
        sink_tokens (`int`, *optional*, defaults to `0`):
            The first `sink_tokens` keys (attention sinks) are attended exactly.
        policy (`str`, *optional*, defaults to `"paper"`):
            `"paper"` uses the basis for every head; `"auto"` uses it only for heads whose relative error on
            `auto_sample_rows` sampled rows is below `auto_tolerance`, and exact attention for the others.
        auto_tolerance (`float`, *optional*, defaults to `0.05`):
            Largest sampled relative row error `"auto"` accepts.
        auto_sample_rows (`int`, *optional*, defaults to `32`):
            Rows sampled per head by `"auto"` (evenly spaced, the last row included).

        > Parameters of the integration

        min_seq_len (`int`, *optional*, defaults to `4096`):
            Sequences shorter than this use exact attention: below it the basis costs more than SDPA (the
            break-even measured on 2 CPU cores with k = 8; set it lower for a small k or to test the basis).
    """

    num_bases: int | None = field(default=None, metadata={"help": "k: bases per head; None = exact."})
    probe_len: int = field(default=16, metadata={"help": "T: probe length of the binary search."})
    threshold: float = field(default=1e-4, metadata={"help": "Mean absolute logit gap that starts a new basis."})
    local_window: int = field(default=0, metadata={"help": "Recent keys attended exactly (0 = off)."})
    sink_tokens: int = field(default=0, metadata={"help": "First keys attended exactly."})
    policy: str = field(default="paper", metadata={"help": "'paper' or 'auto'."})
    auto_tolerance: float = field(default=0.05, metadata={"help": "Sampled error accepted by policy='auto'."})
    auto_sample_rows: int = field(default=32, metadata={"help": "Rows sampled per head by policy='auto'."})
    min_seq_len: int = field(default=4096, metadata={"help": "Shorter sequences use exact attention."})

    def __post_init__(self):
        def require(name, ok, expected):
            value = getattr(self, name)
            if not ok(value):
                raise ValueError(f"conv_basis setting {name!r}={value!r} is invalid: expected {expected}")

        def is_int(value):
            return isinstance(value, int) and not isinstance(value, bool)

        def is_number(value):
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        require("num_bases", lambda v: v is None or (is_int(v) and v >= 1), "None or an integer >= 1")
        require("probe_len", lambda v: is_int(v) and v >= 1, "an integer >= 1")
        require("threshold", lambda v: is_number(v) and v >= 0, "a number >= 0")
        require("local_window", lambda v: is_int(v) and v >= 0, "an integer >= 0")
        require("sink_tokens", lambda v: is_int(v) and v >= 0, "an integer >= 0")
        require("policy", lambda v: v in POLICIES, f"one of {POLICIES}")
        require("auto_tolerance", lambda v: is_number(v) and v > 0, "a number > 0")
        require("auto_sample_rows", lambda v: is_int(v) and v >= 1, "an integer >= 1")
        require("min_seq_len", lambda v: is_int(v) and v >= 0, "an integer >= 0")

    @classmethod
    def from_dict(cls, settings: dict[str, Any] | None) -> "ConvBasisConfig":
        """Validated settings from a dict such as `model.config.conv_basis` (`None` gives the defaults).

        Raises:
            `TypeError` if `settings` is not a dict; `ValueError` naming the key for an unknown key or an
            invalid value.
        """
        if settings is None:
            return cls()
        if isinstance(settings, cls):
            return settings
        if not isinstance(settings, dict):
            raise TypeError(f"conv_basis settings must be a dict, got {type(settings).__name__}: {settings!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"unknown conv_basis setting {unknown[0]!r}; expected keys among {sorted(known)}")
        return cls(**settings)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-serialisable dict (what `model.config.conv_basis` holds)."""
        return dataclasses.asdict(self)
