"""Conv-basis attention: the math (`conv_basis`), its settings (`config`), the transformers
integration registered as `attn_implementation="conv_basis"` (`integration`) and the fit report.

Names are imported on first use; `registration` makes transformers register `"conv_basis"` as soon
as it loads its attention interface, without importing torch or transformers itself.
"""

import importlib
from typing import TYPE_CHECKING

# public name -> submodule that defines it
_LAZY_IMPORTS = {
    "ConvBasisConfig": "config",
    "conv_basis_attention": "conv_basis",
    "conv_basis_decompose": "conv_basis",
    "conv_basis_recompose": "conv_basis",
    "exact_attention": "conv_basis",
    "recover_conv_basis": "conv_basis",
    "sampled_row_error": "conv_basis",
    "ConvBasisAttention": "integration",
    "conv_basis_mask": "integration",
    "enable_conv_basis": "integration",
    "save_conv_basis_model": "integration",
    "ConvBasisReport": "report",
    "HeadFit": "report",
    "conv_basis_report": "report",
}

__all__ = list(_LAZY_IMPORTS)


def __getattr__(name):
    if name in _LAZY_IMPORTS:
        value = getattr(importlib.import_module(f".{_LAZY_IMPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hf_ext.attention' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_IMPORTS))


if TYPE_CHECKING:
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
