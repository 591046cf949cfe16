"""hf_ext: SANDE backdoor removal, conv-basis attention and progressive pose transfer
as native extensions of transformers, TRL and diffusers.

The public names below are imported on first use, so `import hf_ext` stays cheap
and pulls no optional dependency.
"""

import importlib
import os
from typing import TYPE_CHECKING


__version__ = "0.1.0"

# public name -> submodule that defines it
_LAZY_IMPORTS = {
    "render_model_card": "hub",
    "save_model_card": "hub",
    "push_folder_to_hub": "hub",
    "SANDEConfig": "sande",
    "SANDETrainer": "sande",
    "ParrotPrompt": "sande",
    "attack_success_rate": "sande",
    "false_trigger_rate": "sande",
    "multiple_choice_accuracy": "sande",
    "ConvBasisAttention": "attention",
    "ConvBasisConfig": "attention",
    "conv_basis_report": "attention",
    "PoseTransferGenerator": "pose",
    "PoseTransferPipeline": "pose",
    "PoseTransferTrainingConfig": "pose",
    "train_pose_transfer": "pose",
    "MultiScalePatchDiscriminator": "pose",
    "LocalPatchDiscriminator": "pose",
    "PoseTransferLoss": "pose",
    "VGG19Features": "pose",
    "SyntheticPeople": "pose",
    "synthetic_pair_dataset": "pose",
    "PosePairCollator": "pose",
    "load_patn_pairs": "pose",
    "pair_dataset": "pose",
    "render_heatmaps": "pose",
    "render_skeleton": "pose",
    "keypoints_from_skeleton": "pose",
    "estimate_keypoints": "pose",
    "pose_transfer_metrics": "metrics.image_quality",
}

__all__ = ["__version__", *_LAZY_IMPORTS]

# In a source checkout trainers/, model_cards/ and benchmarks/ sit beside this
# folder; an install maps them into the package (see pyproject.toml). Searching the
# checkout root as well makes `hf_ext.trainers` resolve the same way in both.
_checkout_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_checkout_root, "trainers", "__init__.py")):
    __path__.append(_checkout_root)

# Registers attn_implementation="conv_basis" with transformers as soon as transformers loads its attention interface.
from .attention import registration as _conv_basis_registration  # noqa: E402, F401


def __getattr__(name):
    if name in _LAZY_IMPORTS:
        module = importlib.import_module(f".{_LAZY_IMPORTS[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hf_ext' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_IMPORTS))


if TYPE_CHECKING:
    from .attention import ConvBasisAttention, ConvBasisConfig, conv_basis_report
    from .hub import push_folder_to_hub, render_model_card, save_model_card
    from .metrics.image_quality import pose_transfer_metrics
    from .pose import (
        LocalPatchDiscriminator,
        MultiScalePatchDiscriminator,
        PosePairCollator,
        PoseTransferGenerator,
        PoseTransferLoss,
        PoseTransferPipeline,
        PoseTransferTrainingConfig,
        SyntheticPeople,
        VGG19Features,
        estimate_keypoints,
        keypoints_from_skeleton,
        load_patn_pairs,
        pair_dataset,
        render_heatmaps,
        render_skeleton,
        synthetic_pair_dataset,
        train_pose_transfer,
    )
    from .sande import (
        ParrotPrompt,
        SANDEConfig,
        SANDETrainer,
        attack_success_rate,
        false_trigger_rate,
        multiple_choice_accuracy,
    )
