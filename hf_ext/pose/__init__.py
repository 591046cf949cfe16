"""Progressive pose-guided appearance transfer: keypoints and pose encodings, the generator,
discriminators and losses, data, training and the diffusers pipeline."""

from .modeling_pose_transfer import PoseTransferGenerator, PoseTransferGeneratorOutput
from .pipeline_pose_transfer import PoseTransferPipeline, PoseTransferPipelineOutput
from .discriminators import LocalPatchDiscriminator, MultiScalePatchDiscriminator
from .losses import PerceptualLoss, PoseTransferLoss, VGG19Features, adversarial_loss
from .training import PoseTransferTrainingConfig, PoseTransferTrainingOutput, train_pose_transfer
from .data import PosePairCollator, load_image, load_patn_pairs, pair_dataset, pair_features
from .keypoints import (
    CROP_PARTS,
    crop_keypoint_regions,
    estimate_keypoints,
    keypoint_crops,
    read_openpose_json,
    read_patn_annotations,
    read_patn_pairs,
    write_openpose_json,
    write_patn_annotations,
    write_patn_pairs,
)
from .pose_encoding import (
    COCO18_LIMBS,
    COCO18_NAMES,
    NUM_KEYPOINTS,
    keypoints_from_skeleton,
    normalize_keypoints,
    render_heatmaps,
    render_skeleton,
    rescale_keypoints,
)
from .synthetic import SyntheticPeople, synthetic_pair_dataset
