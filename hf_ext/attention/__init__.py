"""Conv-basis attention: the math (`conv_basis`), its settings (`config`), the transformers
integration registered as `attn_implementation="conv_basis"` (`integration`) and the fit report."""

from .config import ConvBasisConfig
from .conv_basis import (
    conv_basis_attention,
    conv_basis_decompose,
    conv_basis_recompose,
    exact_attention,
    recover_conv_basis,
    sampled_row_error,
)
from .integration import ConvBasisAttention, conv_basis_mask, enable_conv_basis, save_conv_basis_model
from .report import ConvBasisReport, HeadFit, conv_basis_report


__all__ = [
    "ConvBasisAttention",
    "ConvBasisConfig",
    "ConvBasisReport",
    "HeadFit",
    "conv_basis_attention",
    "conv_basis_decompose",
    "conv_basis_mask",
    "conv_basis_recompose",
    "conv_basis_report",
    "enable_conv_basis",
    "exact_attention",
    "recover_conv_basis",
    "sampled_row_error",
    "save_conv_basis_model",
]
