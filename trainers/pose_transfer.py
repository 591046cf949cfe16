"""Progressive pose-transfer training, on 1..N processes with accelerate.

# Synthetic people, 64x64 -> 256x256 with fade-in, local losses and EMA
```bash
accelerate launch trainers/pose_transfer.py \
    --output_dir pose-transfer-synthetic \
    --start_resolution 64 64 --final_resolution 256 256 \
    --images_per_stage 20000 --images_per_fade_in 20000 --batch_sizes 16 16 8
```

# DeepFashion (PATN layout), 256x176, two processes, pushed to the Hub
```bash
accelerate launch --multi_gpu --num_processes 2 trainers/pose_transfer.py \
    --dataset /data/deepfashion --start_resolution 64 44 --final_resolution 256 176 --bottleneck_depth 2 \
    --output_dir pose-transfer-deepfashion --push_to_hub --hub_model_id me/pose-transfer-deepfashion
```

# Resume the latest checkpoint, or compare variants at equal wall-clock time
```bash
accelerate launch trainers/pose_transfer.py --output_dir pose-transfer-synthetic --resume_from_checkpoint latest
accelerate launch trainers/pose_transfer.py --output_dir direct --direct --max_seconds 600
```
"""

from accelerate.logging import get_logger
from transformers import HfArgumentParser

from hf_ext.pose.training import PoseTransferTrainingConfig, train_pose_transfer


logger = get_logger(__name__)


def main(argv: list[str] | None = None) -> int:
    """Parses `PoseTransferTrainingConfig` flags from `argv` (default: the command line) and trains."""
    parser = HfArgumentParser(PoseTransferTrainingConfig)
    (config,) = parser.parse_args_into_dataclasses(args=argv)
    output = train_pose_transfer(config)
    logger.info(
        f"Saved the pipeline to {config.output_dir} after {output.state.images_seen} images "
        f"({output.state.elapsed_seconds:.0f} s)",
        main_process_only=True,
    )
    return 0


if __name__ == "__main__":
    main()
