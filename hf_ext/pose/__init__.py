"""Progressive pose-guided appearance transfer: keypoints and pose encodings, the generator,
discriminators and losses, data, training and the diffusers pipeline."""

from .modeling_pose_transfer import PoseTransferGenerator, PoseTransferGeneratorOutput
from .pipeline_pose_transfer import PoseTransferPipeline, PoseTransferPipelineOutput
