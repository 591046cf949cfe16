"""Progressive training of the pose-transfer generator, as a library function.

`train_pose_transfer(config, train_dataset)` runs the schedule of the paper's coarse-to-fine
training, with accelerate handling 1..N processes:

    stage 0 (start resolution) -> [fade-in, stable] stage 1 -> ... -> [fade-in, stable] final stage

Each phase consumes a fixed number of images (`images_per_stage`, `images_per_fade_in`) with
a batch size per stage; during a fade-in the new stage's weight alpha rises linearly from 0 to 1.
`direct=True` instead trains every block at the final resolution from the first step (the
no-growth baseline). With `max_seconds`, training stops after that much wall-clock time; with
`fit_schedule_to_time` (default) the phases then share that time in proportion to their image
counts, so a progressive run reaches the final stage within the budget.

Each step updates the discriminators (global multi-scale patch, local patch on keypoint crops;
only at the last `adversarial_stages` stages) and then the generator on the loss of
`hf_ext.pose.losses.PoseTransferLoss`; an exponential moving average of the generator's weights
is what gets sampled and saved. Checkpoints (safetensors + JSON only) are written at the end of
every phase and every `checkpoint_every_images`; a run resumes from the latest one mid-phase, with
the same data order. Each completed stage writes a PNG grid (reference | target pose | output |
ground truth).
"""

import copy
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers.utils import logging

from ..hub import push_folder_to_hub, save_model_card
from .data import PosePairCollator
from .discriminators import LocalPatchDiscriminator, MultiScalePatchDiscriminator
from .keypoints import CROP_PARTS
from .losses import ADVERSARIAL_LOSSES, PerceptualLoss, PoseTransferLoss, VGG19Features
from .modeling_pose_transfer import PoseTransferGenerator
from .pipeline_pose_transfer import PoseTransferPipeline
from .pose_encoding import render_skeleton


logger = logging.get_logger(__name__)

_CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
_STATE_FILE = "trainer_state.json"


@dataclass
class PoseTransferTrainingConfig:
    r"""
    Configuration of `train_pose_transfer` (every field is also a command-line flag of `trainers/pose_transfer.py`).

    > Parameters that control the data

    Args:
        output_dir (`str`, *optional*, defaults to `"pose-transfer"`): where checkpoints, sample grids and the final
            pipeline are written.
        dataset (`str`, *optional*, defaults to `"synthetic"`): `"synthetic"` (synthetic people) or the root of a
            DeepFashion folder in the PATN layout.
        dataset_split (`str`, *optional*, defaults to `"train"`): PATN split.
        num_synthetic_pairs (`int`, *optional*, defaults to 2000): pairs generated for `dataset="synthetic"`.
        data_seed (`int`, *optional*, defaults to 0): seed of the synthetic people.
        dataloader_num_workers (`int`, *optional*, defaults to 0): workers decoding and rendering batches.

    > Parameters that control the generator

    Args:
        start_resolution (`list[int]`, *optional*, defaults to `[64, 64]`): (height, width) of stage 0.
        final_resolution (`list[int]`, *optional*, defaults to `[256, 256]`): (height, width) of the last stage.
        base_channels, max_channels, bottleneck_depth, norm, output_mode: `PoseTransferGenerator` arguments.

    > Parameters that control the schedule

    Args:
        images_per_stage (`int`, *optional*, defaults to 20000): images of each stable phase.
        images_per_fade_in (`int`, *optional*, defaults to 20000): images of each fade-in phase (0: no fade-in).
        batch_sizes (`list[int]`, *optional*, defaults to `[16, 16, 8, 4, 2]`): per-process batch size per stage;
            the last value repeats for further stages.
        direct (`bool`, *optional*, defaults to `False`): train at the final resolution from the start (no growth),
            for `images_per_stage * num_stages + images_per_fade_in * (num_stages - 1)` images.
        max_seconds (`float`, *optional*): time budget of the run (including resumed time), on `budget_clock`.
        budget_clock (`str`, *optional*, defaults to `"wall"`): `"wall"` (elapsed time) or `"cpu"` (this process's
            CPU time, which keeps budgets comparable on a shared machine whose load changes).
        fit_schedule_to_time (`bool`, *optional*, defaults to `True`): with `max_seconds`, phases share the budget in
            proportion to their images instead of running to their image counts.

    > Parameters that control the optimisation and the losses

    Args:
        learning_rate (`float`, *optional*, defaults to 2e-4): Adam learning rate of the generator.
        discriminator_learning_rate (`float`, *optional*, defaults to 2e-4): of the discriminators.
        adam_beta1 (`float`, *optional*, defaults to 0.5), adam_beta2 (`float`, *optional*, defaults to 0.999).
        l1_weight, perceptual_weight, local_l1_weight, local_perceptual_weight, adversarial_weight,
            local_adversarial_weight (`float`): loss weights (see `PoseTransferLoss`).
        use_local_losses (`bool`, *optional*, defaults to `True`): `False` zeroes every local term and drops the
            local discriminators.
        adversarial_mode (`str`, *optional*, defaults to `"hinge"`): `"hinge"` or `"lsgan"`.
        adversarial_stages (`int`, *optional*, defaults to 2): the GAN terms act at the last this many stages
            (0: no discriminators).
        vgg_weights (`str`, *optional*, defaults to `"timm/vgg19.tv_in1k"`): VGG19 safetensors file, folder or Hub id;
            random weights with a warning when unavailable; `None` (`none` on the command line) for random weights.
        perceptual_layers (`list[str]`, *optional*): VGG19 ReLUs of the perceptual losses.
        crop_size (`int`, *optional*, defaults to 32): side of the keypoint crops fed to the local terms.
        discriminator_channels (`int`, *optional*, defaults to 64), discriminator_scales (`int`, *optional*,
            defaults to 2): global discriminator size.
        local_discriminator_channels (`int`, *optional*, defaults to 32): base channels of each local discriminator.
        ema_decay (`float`, *optional*, defaults to 0.999): decay of the generator's moving average (with warm-up).

    > Parameters that control checkpoints, samples and the Hub

    Args:
        checkpoint_every_images (`int`, *optional*, defaults to 0): also checkpoint every this many images (0: only
            at phase ends and at the end).
        save_total_limit (`int`, *optional*, defaults to 2): checkpoints kept.
        resume_from_checkpoint (`str`, *optional*): a checkpoint folder, or `"latest"` for the newest in `output_dir`.
        num_samples (`int`, *optional*, defaults to 4): rows of the per-stage sample grid.
        logging_steps (`int`, *optional*, defaults to 10): steps between log entries.
        seed (`int`, *optional*, defaults to 0): initialisation and data-order seed.
        push_to_hub (`bool`, *optional*, defaults to `False`): upload the final pipeline (with its model card).
        hub_model_id (`str`, *optional*): repository id; defaults to the output folder's name.
        hub_private (`bool`, *optional*), hub_token (`str`, *optional*).
    """

    output_dir: str = field(default="pose-transfer", metadata={"help": "Output folder."})
    dataset: str = field(default="synthetic", metadata={"help": "'synthetic' or a PATN-layout DeepFashion root."})
    dataset_split: str = field(default="train", metadata={"help": "PATN split."})
    num_synthetic_pairs: int = field(default=2000, metadata={"help": "Synthetic pairs to generate."})
    data_seed: int = field(default=0, metadata={"help": "Seed of the synthetic people."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader workers."})

    start_resolution: list[int] = field(default_factory=lambda: [64, 64], metadata={"help": "Stage-0 height width."})
    final_resolution: list[int] = field(default_factory=lambda: [256, 256], metadata={"help": "Final height width."})
    base_channels: int = field(default=16, metadata={"help": "Generator channels at the final resolution."})
    max_channels: int = field(default=256, metadata={"help": "Generator channel cap."})
    bottleneck_depth: int = field(default=3, metadata={"help": "Downsamplings below the start resolution."})
    norm: str = field(default="group", metadata={"help": "'group', 'instance' or 'none'."})
    output_mode: str = field(default="residual", metadata={"help": "'residual' (keep low-res path) or 'replace'."})

    images_per_stage: int = field(default=20000, metadata={"help": "Images per stable phase."})
    images_per_fade_in: int = field(default=20000, metadata={"help": "Images per fade-in phase."})
    batch_sizes: list[int] = field(
        default_factory=lambda: [16, 16, 8, 4, 2], metadata={"help": "Batch size per stage."}
    )
    direct: bool = field(default=False, metadata={"help": "Train at the final resolution without growth."})
    max_seconds: float | None = field(default=None, metadata={"help": "Wall-clock budget in seconds."})
    budget_clock: str = field(default="wall", metadata={"help": "Clock of max_seconds: 'wall' or 'cpu'."})
    fit_schedule_to_time: bool = field(default=True, metadata={"help": "Spread phases over max_seconds."})

    learning_rate: float = field(default=2e-4, metadata={"help": "Generator learning rate."})
    discriminator_learning_rate: float = field(default=2e-4, metadata={"help": "Discriminator learning rate."})
    adam_beta1: float = field(default=0.5, metadata={"help": "Adam beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "Adam beta2."})
    l1_weight: float = field(default=1.0, metadata={"help": "Weight of the L1 loss."})
    perceptual_weight: float = field(default=1.0, metadata={"help": "Weight of the VGG19 perceptual loss."})
    local_l1_weight: float = field(default=1.0, metadata={"help": "Weight of L1 on keypoint crops."})
    local_perceptual_weight: float = field(default=1.0, metadata={"help": "Weight of perceptual loss on crops."})
    adversarial_weight: float = field(default=0.1, metadata={"help": "Weight of the global GAN loss."})
    local_adversarial_weight: float = field(default=0.1, metadata={"help": "Weight of the local GAN losses."})
    use_local_losses: bool = field(default=True, metadata={"help": "Local losses and local discriminators on/off."})
    adversarial_mode: str = field(default="hinge", metadata={"help": "'hinge' or 'lsgan'."})
    adversarial_stages: int = field(default=2, metadata={"help": "GAN terms at the last N stages (0: none)."})
    vgg_weights: str | None = field(
        default="timm/vgg19.tv_in1k", metadata={"help": "VGG19 weights file/folder/Hub id."}
    )
    perceptual_layers: list[str] = field(
        default_factory=lambda: ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"],
        metadata={"help": "VGG19 layers of the perceptual losses."},
    )
    crop_size: int = field(default=32, metadata={"help": "Side of the keypoint crops."})
    discriminator_channels: int = field(default=64, metadata={"help": "Global discriminator base channels."})
    discriminator_scales: int = field(default=2, metadata={"help": "Global discriminator scales."})
    local_discriminator_channels: int = field(default=32, metadata={"help": "Local discriminators' base channels."})
    ema_decay: float = field(default=0.999, metadata={"help": "EMA decay of the generator."})

    checkpoint_every_images: int = field(
        default=0, metadata={"help": "Checkpoint interval in images (0: phase ends)."}
    )
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "Checkpoint folder or 'latest'."})
    num_samples: int = field(default=4, metadata={"help": "Rows of the sample grid."})
    logging_steps: int = field(default=10, metadata={"help": "Steps between log entries."})
    seed: int = field(default=0, metadata={"help": "Seed."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push the final pipeline to the Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repository id."})
    hub_private: bool | None = field(default=None, metadata={"help": "Create the repository private."})
    hub_token: str | None = field(default=None, metadata={"help": "Hub token."})

    def __post_init__(self):
        for name in ("start_resolution", "final_resolution"):
            value = getattr(self, name)
            if len(value) != 2 or min(value) < 1:
                raise ValueError(f"{name} must be two positive ints (height width), got {value}")
        positive = ("images_per_stage", "num_synthetic_pairs", "crop_size", "logging_steps", "save_total_limit")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.images_per_fade_in < 0 or self.checkpoint_every_images < 0 or self.adversarial_stages < 0:
            raise ValueError(
                "images_per_fade_in, checkpoint_every_images and adversarial_stages must be >= 0, got "
                f"{self.images_per_fade_in}, {self.checkpoint_every_images}, {self.adversarial_stages}"
            )
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch_sizes must be positive ints, got {self.batch_sizes}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be positive, got {self.max_seconds}")
        if self.budget_clock not in ("wall", "cpu"):
            raise ValueError(f"budget_clock={self.budget_clock!r}; expected 'wall' or 'cpu'")
        if self.adversarial_mode not in ADVERSARIAL_LOSSES:
            raise ValueError(f"adversarial_mode={self.adversarial_mode!r}; expected one of {list(ADVERSARIAL_LOSSES)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if isinstance(self.vgg_weights, str) and self.vgg_weights.lower() in ("", "none"):
            self.vgg_weights = None  # `--vgg_weights none` on the command line: random VGG19 weights
        if self.num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {self.num_samples}")

    def generator_config(self) -> dict:
        return dict(
            start_resolution=tuple(self.start_resolution),
            final_resolution=tuple(self.final_resolution),
            base_channels=self.base_channels,
            max_channels=self.max_channels,
            bottleneck_depth=self.bottleneck_depth,
            norm=self.norm,
            output_mode=self.output_mode,
        )


@dataclass
class _Phase:
    stage: int
    fade_in: bool
    images: int


def build_schedule(
    num_stages: int, images_per_stage: int, images_per_fade_in: int, direct: bool = False
) -> list[_Phase]:
    """The phases of a run: stage 0 stable, then (fade-in, stable) per further stage; one final-stage phase if direct."""
    if direct:
        total = images_per_stage * num_stages + images_per_fade_in * (num_stages - 1)
        return [_Phase(num_stages - 1, False, total)]
    phases = [_Phase(0, False, images_per_stage)]
    for stage in range(1, num_stages):
        if images_per_fade_in:
            phases.append(_Phase(stage, True, images_per_fade_in))
        phases.append(_Phase(stage, False, images_per_stage))
    return phases


@dataclass
class PoseTransferTrainerState:
    """Progress of a run; saved as JSON in every checkpoint so a run resumes mid-phase."""

    phase_index: int = 0
    images_in_phase: int = 0
    images_seen: int = 0
    global_step: int = 0
    elapsed_seconds: float = 0.0
    stopped_by_budget: bool = False
    log_history: list = field(default_factory=list)


@dataclass
class PoseTransferTrainingOutput:
    """What `train_pose_transfer` returns.

    Args:
        pipeline (`PoseTransferPipeline`): the pipeline around the EMA generator (also saved to `output_dir`).
        state (`PoseTransferTrainerState`): progress at the end (images seen, time, log history).
    """

    pipeline: PoseTransferPipeline
    state: PoseTransferTrainerState


class _PhaseBatchSampler(torch.utils.data.Sampler):
    """Endless batches of one phase: epoch e is a permutation seeded by (seed, e); process `rank` takes its slice of
    each global batch. Deterministic, so a resumed run sees the same batches from `start_batch` on."""

    def __init__(self, num_examples, batch_size, seed, rank=0, world_size=1, start_batch=0):
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch

    def __iter__(self):
        global_batch = self.batch_size * self.world_size
        batch_index, epoch, order = self.start_batch, -1, None
        while True:
            start = batch_index * global_batch
            indices = []
            for position in range(start + self.rank * self.batch_size, start + (self.rank + 1) * self.batch_size):
                if position // self.num_examples != epoch:
                    epoch = position // self.num_examples
                    order = torch.randperm(
                        self.num_examples, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch)
                    )
                indices.append(int(order[position % self.num_examples]))
            yield indices
            batch_index += 1


def _save_optimizer(optimizer: torch.optim.Optimizer, path_prefix: str):
    """Optimizer state as safetensors (tensors) + JSON (hyper-parameters and scalars): no pickle."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for param_id, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{param_id}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{param_id}.{key}"] = value
    save_file(tensors, f"{path_prefix}.safetensors")
    with open(f"{path_prefix}.json", "w", encoding="utf-8") as f:
        json.dump({"param_groups": state["param_groups"], "scalars": scalars}, f)


def _load_optimizer(optimizer: torch.optim.Optimizer, path_prefix: str):
    with open(f"{path_prefix}.json", encoding="utf-8") as f:
        meta = json.load(f)
    state: dict = {}
    for name, value in [*load_file(f"{path_prefix}.safetensors").items(), *meta["scalars"].items()]:
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _find_checkpoint(output_dir: str, resume_from_checkpoint: str) -> str | None:
    if resume_from_checkpoint != "latest":
        if not os.path.isfile(os.path.join(resume_from_checkpoint, _STATE_FILE)):
            raise ValueError(
                f"resume_from_checkpoint={resume_from_checkpoint!r} is not a checkpoint folder (no {_STATE_FILE})"
            )
        return resume_from_checkpoint
    checkpoints = _list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def _list_checkpoints(output_dir: str) -> list[str]:
    folder = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(folder):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(folder) if (m := _CHECKPOINT_PATTERN.match(name))]
    return [os.path.join(folder, name) for _, name in sorted(found)]


def _sample_grid(generator: PoseTransferGenerator, batch: dict) -> Image.Image:
    """Rows of (reference | target pose | output | ground truth) at the generator's current resolution."""
    with torch.no_grad():
        output = generator(batch["reference_image"], batch["reference_heatmaps"], batch["target_heatmaps"]).sample

    def to_uint8(images):
        return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()

    height, width = output.shape[-2:]
    rows = []
    for reference, keypoints, generated, truth in zip(
        to_uint8(batch["reference_image"]),
        batch["target_keypoints"].cpu().numpy(),
        to_uint8(output),
        to_uint8(batch["target_image"]),
    ):
        rows.append(np.concatenate([reference, render_skeleton(keypoints, height, width), generated, truth], axis=1))
    return Image.fromarray(np.concatenate(rows, axis=0))


def _update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float):
    """ema <- decay * ema + (1 - decay) * model, for parameters; buffers are copied."""
    ema_params = [p for p in ema.parameters()]
    torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)


def load_training_dataset(config: PoseTransferTrainingConfig):
    """The training pairs named by `config.dataset`: synthetic people at the final resolution, or PATN DeepFashion."""
    if config.dataset == "synthetic":
        from .synthetic import synthetic_pair_dataset

        height, width = config.final_resolution
        return synthetic_pair_dataset(config.num_synthetic_pairs, height, width, seed=config.data_seed)
    from .data import load_patn_pairs

    return load_patn_pairs(config.dataset, split=config.dataset_split)


def train_pose_transfer(
    config: PoseTransferTrainingConfig,
    train_dataset=None,
    sample_dataset=None,
    accelerator: Accelerator | None = None,
) -> PoseTransferTrainingOutput:
    """Trains a `PoseTransferGenerator` progressively (or directly) and saves the pipeline to `config.output_dir`.

    Args:
        config (`PoseTransferTrainingConfig`): the run's settings.
        train_dataset (`datasets.Dataset`, *optional*): pairs with the columns of `hf_ext.pose.data.pair_features`;
            defaults to `load_training_dataset(config)`.
        sample_dataset (`datasets.Dataset`, *optional*): pairs for the sample grids (the first `num_samples` rows);
            defaults to `train_dataset`.
        accelerator (`Accelerator`, *optional*): defaults to one that tolerates the stages' unused parameters
            (`find_unused_parameters=True`); pass your own with that setting when running several processes.

    Returns:
        `PoseTransferTrainingOutput`: the pipeline (EMA weights) and the final trainer state.
    """
    if accelerator is None:
        # Stages below the final one leave parameters unused, which DDP must be told about. Without a GPU
        # (or other accelerator) `cpu=True` lets accelerate run several launched processes over gloo.
        accelerator = Accelerator(
            cpu=not torch.accelerator.is_available(),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
    if train_dataset is None:
        train_dataset = load_training_dataset(config)
    if len(train_dataset) == 0:
        raise ValueError("train_dataset is empty; expected pose pairs")
    sample_dataset = train_dataset if sample_dataset is None else sample_dataset
    device = accelerator.device
    torch.manual_seed(config.seed)

    # Models: from the checkpoint being resumed, else fresh.
    checkpoint = (
        _find_checkpoint(config.output_dir, config.resume_from_checkpoint) if config.resume_from_checkpoint else None
    )
    use_local = config.use_local_losses
    if checkpoint is None:
        generator = PoseTransferGenerator(**config.generator_config())
        ema = copy.deepcopy(generator)
        discriminator = (
            MultiScalePatchDiscriminator(
                condition_channels=generator.config.num_keypoints,
                base_channels=config.discriminator_channels,
                num_scales=config.discriminator_scales,
            )
            if config.adversarial_stages
            else None
        )
        local_discriminator = (
            LocalPatchDiscriminator(parts=CROP_PARTS, base_channels=config.local_discriminator_channels)
            if config.adversarial_stages and use_local
            else None
        )
        state = PoseTransferTrainerState()
    else:
        logger.info(f"Resuming from {checkpoint}")
        generator = PoseTransferGenerator.from_pretrained(os.path.join(checkpoint, "generator"))
        ema = PoseTransferGenerator.from_pretrained(os.path.join(checkpoint, "generator_ema"))
        discriminator = local_discriminator = None
        if os.path.isdir(os.path.join(checkpoint, "discriminator")):
            discriminator = MultiScalePatchDiscriminator.from_pretrained(os.path.join(checkpoint, "discriminator"))
        if os.path.isdir(os.path.join(checkpoint, "local_discriminator")):
            local_discriminator = LocalPatchDiscriminator.from_pretrained(
                os.path.join(checkpoint, "local_discriminator")
            )
        with open(os.path.join(checkpoint, _STATE_FILE), encoding="utf-8") as f:
            state = PoseTransferTrainerState(**json.load(f)["state"])
        state.stopped_by_budget = False  # a resumed run continues under the new budget
    ema.requires_grad_(False).eval()
    for model in (generator, discriminator, local_discriminator):
        if model is not None:
            model.train()  # from_pretrained returns eval mode; spectral norm iterates only in training mode

    critics = [m for m in (discriminator, local_discriminator) if m is not None]
    optimizer = torch.optim.Adam(
        generator.parameters(), lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2)
    )
    d_optimizer = (
        torch.optim.Adam(
            [p for m in critics for p in m.parameters()],
            lr=config.discriminator_learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
        )
        if critics
        else None
    )
    if checkpoint is not None:
        _load_optimizer(optimizer, os.path.join(checkpoint, "optimizer"))
        if d_optimizer is not None:
            _load_optimizer(d_optimizer, os.path.join(checkpoint, "discriminator_optimizer"))

    needs_vgg = config.perceptual_weight > 0 or (use_local and config.local_perceptual_weight > 0)
    perceptual = (
        PerceptualLoss(VGG19Features.from_pretrained(config.vgg_weights, config.perceptual_layers))
        if needs_vgg
        else None
    )
    loss_fn = PoseTransferLoss(
        perceptual,
        l1_weight=config.l1_weight,
        perceptual_weight=config.perceptual_weight,
        local_l1_weight=config.local_l1_weight if use_local else 0.0,
        local_perceptual_weight=config.local_perceptual_weight if use_local else 0.0,
        adversarial_weight=config.adversarial_weight,
        local_adversarial_weight=config.local_adversarial_weight if use_local else 0.0,
        adversarial_mode=config.adversarial_mode,
        crop_size=config.crop_size,
    ).to(device)

    prepared = accelerator.prepare(generator, *critics, optimizer, *([d_optimizer] if d_optimizer else []))
    generator_ddp, critics_ddp = prepared[0], prepared[1 : 1 + len(critics)]
    optimizer = prepared[1 + len(critics)]
    d_optimizer = prepared[2 + len(critics)] if d_optimizer else None
    discriminator_ddp = critics_ddp[0] if discriminator is not None else None
    local_ddp = critics_ddp[-1] if local_discriminator is not None else None
    ema.to(device)
    generator = accelerator.unwrap_model(generator_ddp)

    num_stages = generator.num_stages
    phases = build_schedule(num_stages, config.images_per_stage, config.images_per_fade_in, config.direct)
    total_images = sum(p.images for p in phases)
    # With a time budget fitted to the schedule, phase i ends when its share of max_seconds is spent.
    fitted = config.max_seconds is not None and config.fit_schedule_to_time
    phase_ends = np.cumsum([p.images for p in phases]) / total_images * (config.max_seconds or 0)
    world, rank = accelerator.num_processes, accelerator.process_index
    sample_batch = None

    clock = time.perf_counter if config.budget_clock == "wall" else time.process_time
    run_start = clock() - state.elapsed_seconds
    checkpoint_due = (
        (state.images_seen // config.checkpoint_every_images + 1) * config.checkpoint_every_images
        if config.checkpoint_every_images
        else None
    )

    def elapsed() -> float:
        seconds = torch.tensor([clock() - run_start], dtype=torch.float64, device=device)
        return float(broadcast(seconds) if world > 1 else seconds)  # one clock for every process

    while state.phase_index < len(phases) and not state.stopped_by_budget:
        phase = phases[state.phase_index]
        phase_start_time = phase_ends[state.phase_index - 1] if state.phase_index else 0.0
        batch_size = config.batch_sizes[min(phase.stage, len(config.batch_sizes) - 1)]
        for model in (generator, ema):
            model.set_stage(phase.stage, 0.0 if phase.fade_in else 1.0)
        height, width = generator.resolution
        loader = torch.utils.data.DataLoader(
            train_dataset,
            batch_sampler=_PhaseBatchSampler(
                len(train_dataset),
                batch_size,
                seed=config.seed * 1000 + state.phase_index,
                rank=rank,
                world_size=world,
                start_batch=state.images_in_phase // (batch_size * world),
            ),
            collate_fn=PosePairCollator(height, width),
            num_workers=config.dataloader_num_workers,
        )
        adversarial = phase.stage >= num_stages - config.adversarial_stages
        description = f"stage {phase.stage} {height}x{width}" + (" fade-in" if phase.fade_in else "")
        progress = tqdm(
            total=None if fitted else phase.images,  # a time-fitted phase has no image count to reach
            initial=state.images_in_phase,
            desc=description,
            unit="img",
            disable=not accelerator.is_local_main_process,
        )
        batches = iter(loader)
        while True:
            now = elapsed()
            if not fitted and config.max_seconds is not None and now >= config.max_seconds:
                state.stopped_by_budget = True
                break
            if fitted:
                fraction = (now - phase_start_time) / max(phase_ends[state.phase_index] - phase_start_time, 1e-9)
            else:
                fraction = state.images_in_phase / phase.images
            if fraction >= 1.0:
                break
            if phase.fade_in:
                for model in (generator, ema):
                    model.set_fade_in_alpha(min(1.0, max(0.0, fraction)))
            batch = {k: v.to(device) for k, v in next(batches).items()}
            logs = _training_step(
                batch,
                generator_ddp,
                discriminator_ddp if adversarial else None,
                local_ddp if adversarial else None,
                optimizer,
                d_optimizer,
                loss_fn,
                accelerator,
            )
            state.global_step += 1
            state.images_in_phase += batch_size * world
            state.images_seen += batch_size * world
            decay = min(config.ema_decay, (1 + state.global_step) / (10 + state.global_step))
            _update_ema(ema, generator, decay)
            progress.update(batch_size * world)
            if state.global_step % config.logging_steps == 0:
                entry = {
                    "step": state.global_step,
                    "images": state.images_seen,
                    "stage": phase.stage,
                    "alpha": generator.fade_in_alpha,
                    "seconds": round(now, 2),
                    **logs,
                }
                state.log_history.append(entry)
                progress.set_postfix({k: round(v, 4) for k, v in logs.items()})
                logger.info(str(entry))
            if checkpoint_due is not None and state.images_seen >= checkpoint_due:
                state.elapsed_seconds = elapsed()
                _save_checkpoint(
                    config,
                    accelerator,
                    generator,
                    ema,
                    discriminator,
                    local_discriminator,
                    optimizer,
                    d_optimizer,
                    state,
                )
                checkpoint_due += config.checkpoint_every_images
        progress.close()
        state.elapsed_seconds = elapsed()
        stage_done = state.phase_index + 1 == len(phases) or phases[state.phase_index + 1].stage != phase.stage
        if not state.stopped_by_budget:
            state.phase_index += 1
            state.images_in_phase = 0
        if accelerator.is_main_process and config.num_samples and (stage_done or state.stopped_by_budget):
            if sample_batch is None:
                sample_batch = [sample_dataset[i] for i in range(min(config.num_samples, len(sample_dataset)))]
            collated = {k: v.to(device) for k, v in PosePairCollator(height, width)(sample_batch).items()}
            os.makedirs(os.path.join(config.output_dir, "samples"), exist_ok=True)
            _sample_grid(ema, collated).save(
                os.path.join(config.output_dir, "samples", f"stage-{phase.stage}-{height}x{width}.png")
            )
        _save_checkpoint(
            config, accelerator, generator, ema, discriminator, local_discriminator, optimizer, d_optimizer, state
        )

    pipeline = PoseTransferPipeline(generator=ema)
    if accelerator.is_main_process:
        pipeline.save_pretrained(config.output_dir)
        write_model_card(config, ema, state)
        if config.push_to_hub:
            push_folder_to_hub(
                config.output_dir,
                config.hub_model_id or os.path.basename(os.path.normpath(config.output_dir)),
                commit_message=f"Pose transfer generator after {state.images_seen} images",
                private=config.hub_private,
                token=config.hub_token,
                ignore_patterns=["checkpoints/*"],  # resumable state stays local
            )
    accelerator.wait_for_everyone()
    return PoseTransferTrainingOutput(pipeline=pipeline, state=state)


def _training_step(batch, generator, discriminator, local_discriminator, optimizer, d_optimizer, loss_fn, accelerator):
    """One discriminator update (when critics are active) and one generator update."""
    fake = generator(batch["reference_image"], batch["reference_heatmaps"], batch["target_heatmaps"]).sample
    logs = {}
    critics_active = discriminator is not None or local_discriminator is not None
    if critics_active:
        d_loss, d_logs = loss_fn.discriminator_loss(
            fake,
            batch["target_image"],
            batch["target_heatmaps"],
            batch["target_keypoints"],
            discriminator,
            local_discriminator,
        )
        d_optimizer.zero_grad(set_to_none=True)
        accelerator.backward(d_loss)
        d_optimizer.step()
        logs.update(d_logs)
    g_loss, g_logs = loss_fn.generator_loss(
        fake,
        batch["target_image"],
        batch["target_heatmaps"],
        batch["target_keypoints"],
        discriminator,
        local_discriminator,
    )
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(g_loss)
    optimizer.step()
    # The generator's backward also left gradients in the critics; the next critic update clears them.
    logs.update(g_logs)
    logs["loss"] = float(g_loss.detach())
    return logs


def _save_checkpoint(
    config, accelerator, generator, ema, discriminator, local_discriminator, optimizer, d_optimizer, state
):
    """Writes checkpoint-<images seen> (safetensors + JSON) atomically: a crash mid-write leaves older ones intact."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        folder = os.path.join(config.output_dir, "checkpoints")
        final = os.path.join(folder, f"checkpoint-{state.images_seen}")
        partial = final + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        generator.save_pretrained(os.path.join(partial, "generator"))
        ema.save_pretrained(os.path.join(partial, "generator_ema"))
        if discriminator is not None:
            discriminator.save_pretrained(os.path.join(partial, "discriminator"))
        if local_discriminator is not None:
            local_discriminator.save_pretrained(os.path.join(partial, "local_discriminator"))
        _save_optimizer(optimizer, os.path.join(partial, "optimizer"))
        if d_optimizer is not None:
            _save_optimizer(d_optimizer, os.path.join(partial, "discriminator_optimizer"))
        with open(os.path.join(partial, _STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(
                {"state": asdict(state), "config": asdict(config), "num_processes": accelerator.num_processes},
                f,
                indent=2,
            )
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        for old in _list_checkpoints(config.output_dir)[: -config.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def write_model_card(config: PoseTransferTrainingConfig, generator, state, eval_results=None):
    """Write the pipeline's model card (`model_cards/pose_transfer.md`) into `config.output_dir`.

    Args:
        config (`PoseTransferTrainingConfig`), generator (`PoseTransferGenerator`), state (`PoseTransferTrainerState`):
            the run the card describes.
        eval_results (`list`, *optional*): measured results for the card's metadata (see `hf_ext.hub.render_model_card`).
    """
    settings = {
        "resolution (height, width)": generator.resolution,
        "stages": generator.resolutions,
        "training": "direct (no growth)" if config.direct else "progressive with fade-in",
        "images seen": state.images_seen,
        "training seconds": round(state.elapsed_seconds, 1),
        "local losses": config.use_local_losses,
        "adversarial": f"{config.adversarial_mode}, last {config.adversarial_stages} stages",
        "dataset": config.dataset,
    }
    save_model_card(
        config.output_dir,
        "pose_transfer",
        model_name=config.hub_model_id or os.path.basename(os.path.normpath(config.output_dir)),
        library_name="diffusers",
        pipeline_tag="image-to-image",
        tags=["pose-transfer", "progressive-growing"],
        datasets=None if config.dataset == "synthetic" else [config.dataset],
        settings=settings,
        eval_results=eval_results,
    )
