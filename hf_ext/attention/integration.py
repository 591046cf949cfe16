"""Conv-basis attention as a transformers attention implementation, `attn_implementation="conv_basis"`.

Importing `hf_ext` registers it in `AttentionInterface` (the attention function) and in
`AttentionMaskInterface` (the mask function, without which transformers would drop padding
masks). Settings are read from the model config's `conv_basis` dict (see `ConvBasisConfig`).

Validation of the settings: transformers offers no hook at `from_pretrained` for a registered
attention function, so the settings are validated (a) by `ConvBasisConfig.from_dict` and
`enable_conv_basis`, and (b) by the mask function, which every model calls once at the start of
its forward pass, before any layer runs. An invalid `conv_basis` dict therefore raises a
`ValueError` naming the key before any attention is computed.
"""

import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface
from transformers.utils import logging

from .config import ConvBasisConfig
from .conv_basis import conv_basis_attention, exact_attention

logger = logging.get_logger(__name__)

ATTN_IMPLEMENTATION = "conv_basis"

# Set by `conv_basis_report`: called with each layer's attention inputs, which then run exactly.
_RECORDER: ContextVar = ContextVar("conv_basis_recorder", default=None)


class ConvBasisAttention:
    """Conv-basis attention with the signature of a transformers attention function.

    The registered instance reads its settings from `module.config.conv_basis`; an instance built
    with settings uses those instead, and can be called on (query, key, value) tensors directly.
    The convolution path runs for causal prefill (`Lq == Lk >= min_seq_len`) with a plain causal,
    padded (any key mask) or sliding-window mask; every other call is exact: decode steps and
    calls with a KV cache (already O(n d) per token), short sequences, dropout in training,
    non-causal modules and masks of any other pattern.

    Args:
        settings (`ConvBasisConfig` or `dict`, *optional*): fixed settings; by default each call reads
            `module.config.conv_basis`.

    Example:

    ```python
    >>> import hf_ext  # registers "conv_basis"
    >>> from transformers import AutoModelForCausalLM
    >>> model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="conv_basis")
    ```
    """

    def __init__(self, settings: ConvBasisConfig | dict | None = None):
        self.settings = None if settings is None else ConvBasisConfig.from_dict(settings)
        # Every layer of a forward pass gets the same mask tensor: its O(n²) pattern check runs once.
        self._mask_check = None  # (weak reference to the mask, its version, sliding_window, result)

    def __call__(
        self,
        module: torch.nn.Module | None,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        """Attention output `(B, Lq, H, Dv)` and `None` (weights are never formed).

        Args:
            module (`torch.nn.Module`, *optional*): the attention layer (for `config`, `is_causal`).
            query (`torch.Tensor` of shape `(B, H, Lq, D)`), key/value (`(B, Hkv, Lk, D)`): keys not expanded for GQA.
            attention_mask (`torch.Tensor`, *optional*): boolean `(B, 1, Lq, Lk)` mask from the mask function,
                True = attend.
            scaling (`float`, *optional*): `D ** -0.5` by default.
            dropout (`float`, defaults to 0.0): attention dropout (computed exactly when positive).
            **kwargs: `sliding_window`, `softcap`, `output_attentions`, ... as passed by the model.
        """
        if kwargs.get("output_attentions", False):
            raise ValueError(
                "conv_basis attention never forms the attention weights, so output_attentions=True is not supported; "
                "load the model with attn_implementation='eager' to inspect them"
            )
        settings = self.settings or _model_settings(module)
        softcap, sliding_window = kwargs.pop("softcap", None), kwargs.pop("sliding_window", None)
        scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
        q_len, kv_len = query.shape[2], key.shape[2]

        prefill = getattr(module, "is_causal", True) and q_len == kv_len and q_len > 1
        key_mask, pattern_ok = self._check_mask(attention_mask, sliding_window) if prefill else (None, False)
        causal_prefill = prefill and pattern_ok and dropout == 0.0
        recorder = _RECORDER.get()
        if causal_prefill and recorder is not None:
            recorder(
                module,
                query,
                key,
                value,
                scaling=scaling,
                softcap=softcap,
                sliding_window=sliding_window,
                key_mask=key_mask,
            )
        if not causal_prefill or recorder is not None or q_len < settings.min_seq_len:
            if dropout > 0.0:
                logger.warning_once(
                    "conv_basis: attention dropout > 0 needs the attention weights; computing exact attention."
                )
            elif prefill and not pattern_ok:
                logger.warning_once(
                    "conv_basis: the attention mask is not causal + padding (+ window); computing exact attention."
                )
            return _exact(
                module, query, key, value, attention_mask, scaling, dropout, softcap, sliding_window, **kwargs
            )

        output = conv_basis_attention(
            query,
            key,
            value,
            scaling=scaling,
            num_bases=settings.num_bases,
            probe_len=settings.probe_len,
            threshold=settings.threshold,
            local_window=settings.local_window,
            sink_tokens=settings.sink_tokens,
            policy=settings.policy,
            auto_tolerance=settings.auto_tolerance,
            auto_sample_rows=settings.auto_sample_rows,
            softcap=softcap,
            sliding_window=sliding_window,
            key_mask=key_mask,
        )
        return output.transpose(1, 2).contiguous(), None

    def _check_mask(self, attention_mask, sliding_window):
        if attention_mask is None:
            return None, True
        cached = self._mask_check
        if (
            cached is not None
            and cached[0]() is attention_mask
            and cached[1:3] == (attention_mask._version, sliding_window)
        ):
            return cached[3]
        result = _key_mask_from(attention_mask, sliding_window)
        self._mask_check = (weakref.ref(attention_mask), attention_mask._version, sliding_window, result)
        return result


def _model_settings(module) -> ConvBasisConfig:
    config = getattr(module, "config", None)
    return ConvBasisConfig.from_dict(getattr(config, "conv_basis", None))


def _key_mask_from(attention_mask, sliding_window):
    """`(key_mask, ok)`: the per-key mask when the square mask is causal ∧ key mask (∧ window), else `ok=False`."""
    if attention_mask is None:
        return None, True
    if attention_mask.dtype != torch.bool or attention_mask.ndim != 4 or attention_mask.shape[1] != 1:
        return None, False
    mask = attention_mask[:, 0]
    q_len, kv_len = mask.shape[-2:]
    key_mask = mask.any(dim=-2)  # a key is valid iff some query attends to it
    lag = torch.arange(q_len, device=mask.device)[:, None] - torch.arange(kv_len, device=mask.device)[None, :]
    pattern = (lag >= 0) if sliding_window is None else (lag >= 0) & (lag < sliding_window)
    if not torch.equal(mask, pattern[None] & key_mask[:, None, :]):
        return None, False
    return (None if bool(key_mask.all()) else key_mask), True


def _exact(module, query, key, value, attention_mask, scaling, dropout, softcap, sliding_window, **kwargs):
    # transformers' mask already holds the window (and the cache offsets) when there is one.
    if softcap is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    num_heads = query.shape[1]
    key, value = (t.repeat_interleave(num_heads // t.shape[1], dim=1) for t in (key, value))
    output = exact_attention(
        query, key, value, scaling=scaling, softcap=softcap, dropout=dropout, attention_mask=attention_mask,
        sliding_window=sliding_window if attention_mask is None else None,
    )  # fmt: skip
    return output.transpose(1, 2).contiguous(), None


def conv_basis_mask(*args, **kwargs):
    """Mask function registered as `"conv_basis"`: validates `config.conv_basis`, then builds sdpa's mask.

    It returns `None` for the plain causal case and a boolean `(B, 1, Lq, Lk)` mask otherwise (padding,
    sliding window, cache), exactly as `transformers.masking_utils.sdpa_mask`.
    """
    config = kwargs.get("config")
    if config is not None:
        ConvBasisConfig.from_dict(getattr(config, "conv_basis", None))
    return sdpa_mask(*args, **kwargs)


@contextmanager
def record_attention_inputs(recorder):
    """Within the context, conv-basis layers hand their inputs to `recorder` and compute exact attention."""
    token = _RECORDER.set(recorder)
    try:
        yield
    finally:
        _RECORDER.reset(token)


def enable_conv_basis(model, settings: ConvBasisConfig | dict | None = None, **overrides):
    """Validate settings, store them as `model.config.conv_basis` and switch the model to `"conv_basis"`.

    Args:
        model (`PreTrainedModel`): a model whose attention goes through `AttentionInterface`.
        settings (`ConvBasisConfig` or `dict`, *optional*): base settings; the model's current ones by default.
        **overrides: individual settings, e.g. `num_bases=8, local_window=128`.

    Returns:
        The same model.
    """
    base = settings if settings is not None else getattr(model.config, "conv_basis", None)
    merged = {**ConvBasisConfig.from_dict(base).to_dict(), **overrides}
    model.config.conv_basis = ConvBasisConfig.from_dict(merged).to_dict()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return model


def save_conv_basis_model(
    model, save_directory, tokenizer=None, *, model_name=None, base_model=None, eval_results=None, **card_kwargs
) -> Path:
    """`save_pretrained` (settings in `config.json`) plus a model card rendered from `model_cards/conv_basis.md`.

    Args:
        model (`PreTrainedModel`): a model with `config.conv_basis` set (see `enable_conv_basis`).
        save_directory (`str` or `Path`): target folder.
        tokenizer (*optional*): saved alongside.
        model_name (`str`, *optional*): name in the card; the folder name by default.
        base_model (`str`, *optional*): Hub id of the model the settings were applied to.
        eval_results (*optional*): forwarded to `hf_ext.hub.save_model_card`.
        **card_kwargs: further arguments of `hf_ext.hub.save_model_card` (license, tags, datasets, ...).

    Returns:
        `Path` of the folder.
    """
    from ..hub import save_model_card

    settings = ConvBasisConfig.from_dict(getattr(model.config, "conv_basis", None)).to_dict()
    save_directory = Path(save_directory)
    model.config.conv_basis = settings
    model.save_pretrained(save_directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(save_directory)
    tags = sorted({*(card_kwargs.pop("tags", None) or ()), "conv-basis-attention", "hf-ext"})
    save_model_card(
        save_directory,
        "conv_basis",
        model_name=model_name or save_directory.name,
        base_model=base_model,
        eval_results=eval_results,
        tags=tags,
        pipeline_tag=card_kwargs.pop("pipeline_tag", "text-generation"),
        settings=settings,
        **card_kwargs,
    )
    return save_directory


AttentionInterface.register(ATTN_IMPLEMENTATION, ConvBasisAttention())
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, conv_basis_mask)
