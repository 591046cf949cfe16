"""Pose-transfer benchmark: quality at equal training time, and speed against a diffusion peer.

Quality: synthetic people (`hf_ext.pose.synthetic`); the held-out pairs come from another
seed, so their people and poses are unseen in training. Each variant of ours trains for the same
CPU-time budget with `hf_ext.pose.training.train_pose_transfer` (`max_seconds` with
`budget_clock="cpu"`), for every seed, in interleaved order (seed by seed, variant by variant):

- `progressive_local`: progressive growth with fade-in, local losses on (the method);
- `progressive_no_local`: the same without the local losses and local discriminators;
- `direct_local`: no growth, every step at the final resolution, local losses on;
- baselines `copy_reference` (output = the reference image) and `background` (a plain image of the
  reference's background colour: on a mostly plain background it scores high whole-image SSIM).

Scores (`hf_ext.metrics.image_quality`): SSIM (no padding), PSNR, SSIM on the keypoint crops
(face, hands, feet, torso) and SSIM on the person's region.

Speed (CPU): one generator forward pass (batch 1) at 256, 512 and 1024 pixels, interleaved with
denoising steps of an SD-1.5-sized `UNet2DConditionModel` (random weights: the cost does not
depend on them) on the 8x-downsampled latent. The diffusion cost per image is reported as 50 x the
measured time of one step (one UNet call, no classifier-free guidance, no VAE): a lower bound on
a latent-diffusion peer's cost. Peak memory is the peak resident memory of a fresh process that
builds the generator and runs one forward pass at that resolution.

Writes `pose_transfer.json`, `pose_transfer.md` and `pose_transfer_samples.png` to `--output_dir`.

    python -m hf_ext.benchmarks.pose_transfer --quick              # under 5 minutes
    hf-ext bench pose --output_dir benchmarks/results              # the full run
"""

import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image
from transformers import HfArgumentParser


VARIANTS = {
    "progressive_local": dict(direct=False, use_local_losses=True),
    "progressive_no_local": dict(direct=False, use_local_losses=False),
    "direct_local": dict(direct=True, use_local_losses=True),
}
BASELINES = ("copy_reference", "background")
DIFFUSION_STEPS = 50
# Stable Diffusion 1.5's UNet (860M parameters).
SD15_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)


@dataclass
class PoseTransferBenchmarkArguments:
    output_dir: str = field(default="benchmarks/results", metadata={"help": "Where the JSON, markdown and PNG go."})
    quick: bool = field(default=False, metadata={"help": "Small settings that finish in under 5 minutes."})
    seeds: list[int] = field(default_factory=lambda: [0, 1], metadata={"help": "Training seeds (at least 2)."})
    train_seconds: float | None = field(
        default=None, metadata={"help": "CPU-time training budget per variant and seed (default 50, quick 4)."}
    )
    resolution: list[int] = field(default_factory=lambda: [64, 64], metadata={"help": "Final (height width) of the quality runs."})
    start_resolution: list[int] = field(default_factory=lambda: [32, 32], metadata={"help": "Stage-0 (height width)."})
    eval_seed: int = field(default=2, metadata={"help": "SyntheticPeople seed of the held-out pairs (training uses 0)."})
    num_train_pairs: int | None = field(default=None, metadata={"help": "Training pairs (default 1000, quick 200)."})
    num_eval_pairs: int | None = field(default=None, metadata={"help": "Held-out pairs (default 64, quick 16)."})
    batch_size: int = field(default=8, metadata={"help": "Training batch size at every stage."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Generator learning rate (Adam)."})
    max_channels: int = field(default=64, metadata={"help": "Generator channel cap of the quality runs."})
    adversarial_stages: int = field(default=0, metadata={"help": "GAN terms at the last N stages (0: none)."})
    perceptual_weight: float = field(
        default=0.0, metadata={"help": "VGG19 perceptual weight (0 here: VGG19 costs ~10x a generator step on CPU)."}
    )
    local_perceptual_weight: float = field(default=0.0, metadata={"help": "VGG19 perceptual weight on the crops."})
    vgg_weights: str | None = field(
        default="timm/vgg19.tv_in1k", metadata={"help": "VGG19 weights (random with a warning when not available offline)."}
    )
    speed_resolutions: list[int] = field(default_factory=lambda: [256, 512, 1024], metadata={"help": "Square sizes timed."})
    speed_repeats: int | None = field(default=None, metadata={"help": "Timed generator passes per size (default 3, quick 1)."})
    diffusion_resolutions: list[int] | None = field(
        default=None, metadata={"help": "Sizes at which the UNet step is timed (default: all speed sizes; quick: 256 and 512)."}
    )
    num_threads: int = field(
        default=1, metadata={"help": "torch CPU threads (1: on a shared, loaded machine 2 threads contend and run slower)."}
    )
    skip_quality: bool = field(default=False, metadata={"help": "Only the speed part."})
    skip_speed: bool = field(default=False, metadata={"help": "Only the quality part."})

    def __post_init__(self):
        quick = self.quick
        self.train_seconds = self.train_seconds or (4.0 if quick else 50.0)
        self.num_train_pairs = self.num_train_pairs or (200 if quick else 1000)
        self.num_eval_pairs = self.num_eval_pairs or (16 if quick else 64)
        self.speed_repeats = self.speed_repeats or (1 if quick else 3)
        if self.diffusion_resolutions is None:
            self.diffusion_resolutions = [r for r in self.speed_resolutions if r <= 512] if quick else list(self.speed_resolutions)
        if self.eval_seed == 0:
            raise ValueError("eval_seed must differ from 0, the seed of the training people")
        if len(self.seeds) < 1 or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct integers, got {self.seeds}")
        for name in ("resolution", "start_resolution"):
            if len(getattr(self, name)) != 2:
                raise ValueError(f"{name} must be two integers (height width), got {getattr(self, name)}")
        if not set(self.diffusion_resolutions) <= set(self.speed_resolutions):
            raise ValueError(f"diffusion_resolutions {self.diffusion_resolutions} must be among speed_resolutions {self.speed_resolutions}")


# ---------------------------------------------------------------------------------------
# Quality
# ---------------------------------------------------------------------------------------


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def _baseline_predictions(batch: dict) -> dict:
    reference = batch["reference_image"]
    # The background colour: per image, the median of the reference's border pixels.
    border = torch.cat([reference[:, :, 0], reference[:, :, -1], reference[:, :, :, 0], reference[:, :, :, -1]], dim=2)
    background = border.median(dim=2).values[:, :, None, None].expand_as(reference)
    return {"copy_reference": reference, "background": background.contiguous()}


def _score(predictions: torch.Tensor, batch: dict) -> dict:
    from hf_ext.metrics.image_quality import pose_transfer_metrics

    return pose_transfer_metrics(
        predictions,
        batch["target_image"],
        keypoints=batch["target_keypoints"],
        masks=batch["target_mask"][:, 0],
        value_range=(-1.0, 1.0),
    )


def _train_variant(name, seed, args, train_dataset, work_dir):
    from hf_ext.pose.training import PoseTransferTrainingConfig, train_pose_transfer

    config = PoseTransferTrainingConfig(
        output_dir=os.path.join(work_dir, f"{name}-seed{seed}"),
        start_resolution=list(args.start_resolution),
        final_resolution=list(args.resolution),
        # Time-limited: the phases share `max_seconds` in proportion to these (equal) image counts.
        images_per_stage=10**7,
        images_per_fade_in=10**7,
        batch_sizes=[args.batch_size],
        learning_rate=args.learning_rate,
        max_seconds=args.train_seconds,
        # CPU time, not wall clock: on a shared machine a run's CPU share varies with the load.
        budget_clock="cpu",
        fit_schedule_to_time=True,
        max_channels=args.max_channels,
        adversarial_stages=args.adversarial_stages,
        perceptual_weight=args.perceptual_weight,
        local_perceptual_weight=args.local_perceptual_weight,
        vgg_weights=args.vgg_weights,
        num_samples=0,
        save_total_limit=1,
        logging_steps=50,
        seed=seed,
        **VARIANTS[name],
    )
    wall, cpu = time.perf_counter(), time.process_time()
    output = train_pose_transfer(config, train_dataset=train_dataset)
    return output.pipeline.generator.eval(), {
        "variant": name,
        "seed": seed,
        "wall_seconds": round(time.perf_counter() - wall, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
        "images_seen": output.state.images_seen,
        "steps": output.state.global_step,
    }


def run_quality(args) -> tuple[dict, list, Image.Image]:
    """Trains every variant for every seed and scores it on the held-out pairs; returns (quality, runs, grid)."""
    from hf_ext.pose.data import PosePairCollator
    from hf_ext.pose.pose_encoding import render_skeleton
    from hf_ext.pose.synthetic import synthetic_pair_dataset

    height, width = args.resolution
    train_dataset = synthetic_pair_dataset(args.num_train_pairs, height, width, seed=0)
    held_out = synthetic_pair_dataset(args.num_eval_pairs, height, width, seed=args.eval_seed)
    batch = PosePairCollator(height, width)([held_out[i] for i in range(len(held_out))])

    per_seed = {name: [] for name in (*BASELINES, *VARIANTS)}
    predictions = _baseline_predictions(batch)
    for name, images in predictions.items():
        per_seed[name].append(_score(images, batch))
    runs = []
    with tempfile.TemporaryDirectory() as work_dir:
        for seed in args.seeds:
            for name in VARIANTS:
                print(f"training {name} seed {seed} for {args.train_seconds:.0f} s", flush=True)
                generator, run = _train_variant(name, seed, args, train_dataset, work_dir)
                with torch.no_grad():
                    output = generator(batch["reference_image"], batch["reference_heatmaps"], batch["target_heatmaps"]).sample
                run.update(_score(output, batch))
                per_seed[name].append({k: run[k] for k in ("ssim", "psnr", "local_ssim", "person_ssim")})
                runs.append(run)
                if seed == args.seeds[0]:
                    predictions[name] = output
    quality = {
        name: {metric: float(np.mean([s[metric] for s in scores])) for metric in scores[0]}
        for name, scores in per_seed.items()
    }
    # Grid rows: reference | target pose | copy | each variant (first seed) | ground truth.
    columns = [_to_uint8(batch["reference_image"])]
    columns.append(np.stack([render_skeleton(k, height, width) for k in batch["target_keypoints"].numpy()]))
    columns += [_to_uint8(predictions[name]) for name in ("copy_reference", *VARIANTS)]
    columns.append(_to_uint8(batch["target_image"]))
    rows = [np.concatenate([column[i] for column in columns], axis=1) for i in range(min(6, len(held_out)))]
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    zoom = max(1, 128 // height)  # small images are enlarged (nearest) so details stay visible
    grid = grid.resize((grid.width * zoom, grid.height * zoom), Image.NEAREST)
    return quality, runs, grid


# ---------------------------------------------------------------------------------------
# Speed
# ---------------------------------------------------------------------------------------

# Located through the import system: the same in a checkout and in an install.
_GENERATOR_FILE = importlib.util.find_spec("hf_ext.pose.modeling_pose_transfer").origin


def _speed_generator():
    """The default generator grown to 1024x1024 (64 -> 1024, the training script's channel settings)."""
    from hf_ext.pose.modeling_pose_transfer import PoseTransferGenerator

    generator = PoseTransferGenerator(start_resolution=64, final_resolution=1024)
    generator.set_stage(generator.num_stages - 1)
    return generator.eval()


# Runs in a fresh interpreter: loads the model file by path (torch + diffusers only), so the peak
# resident memory is the generator's weights, one forward pass and the runtime, nothing else.
# VmHWM (this process's own high-water mark) rather than ru_maxrss, which Linux carries over
# from the parent across fork + exec.
_MEMORY_PROBE = """
import importlib.util, json, sys, torch

def high_water_mb():
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    except OSError:  # no procfs: fall back to ru_maxrss (may include the parent's peak)
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

torch.set_num_threads(int(sys.argv[3]))
spec = importlib.util.spec_from_file_location("modeling_pose_transfer", sys.argv[1])
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
generator = module.PoseTransferGenerator(start_resolution=64, final_resolution=1024)
generator.set_stage(generator.num_stages - 1); generator.eval()
size = int(sys.argv[2])
inputs = (torch.rand(1, 3, size, size) * 2 - 1, torch.rand(1, 18, size, size), torch.rand(1, 18, size, size))
before = high_water_mb()
with torch.no_grad():
    generator(*inputs)
print(json.dumps({"peak_mem_mb": high_water_mb(), "before_forward_mb": before}))
"""


def _peak_memory(size: int, threads: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, _GENERATOR_FILE, str(size), str(threads)],
        capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def _sd15_unet():
    """SD-1.5-sized UNet with random N(0, 0.02) weights (allocated empty, then filled: faster than default init)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    unet = unet.to_empty(device="cpu")
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.normal_(0, 0.02)
    return unet.eval()


def _time(fn) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        fn()
    return time.perf_counter() - start


def run_speed(args) -> dict:
    """Generator passes interleaved with UNet steps, per resolution; memory from fresh processes."""
    generator = _speed_generator()
    unet = _sd15_unet() if args.diffusion_resolutions else None
    context = torch.randn(1, 77, 768)
    # Warm-up (first-call allocations) at the smallest size, for both models.
    small = min(args.speed_resolutions)
    _time(lambda: generator(torch.zeros(1, 3, small, small), torch.zeros(1, 18, small, small), torch.zeros(1, 18, small, small)))
    if unet is not None:
        _time(lambda: unet(torch.randn(1, 4, small // 8, small // 8), 500, encoder_hidden_states=context))
    speed = {}
    for size in args.speed_resolutions:
        print(f"timing {size}x{size}", flush=True)
        inputs = (torch.rand(1, 3, size, size) * 2 - 1, torch.rand(1, 18, size, size), torch.rand(1, 18, size, size))
        latent = torch.randn(1, 4, size // 8, size // 8)
        ours, steps = [], []
        for repeat in range(args.speed_repeats):
            ours.append(_time(lambda: generator(*inputs)))
            # The UNet step is slow: one per size (between generator passes) is enough for a ratio.
            if unet is not None and size in args.diffusion_resolutions and repeat == 0:
                steps.append(_time(lambda: unet(latent, 500, encoder_hidden_states=context)))
        ours_seconds = float(np.median(ours))
        entry = {
            "ours_images_per_second": 1.0 / ours_seconds,
            "ours_seconds_per_image": ours_seconds,
            "diffusion_step_seconds": float(np.median(steps)) if steps else None,
            "diffusion_seconds_per_image": DIFFUSION_STEPS * float(np.median(steps)) if steps else None,
        }
        entry["ratio"] = entry["diffusion_seconds_per_image"] / ours_seconds if steps else None
        entry.update(_peak_memory(size, args.num_threads))
        speed[f"{size}x{size}"] = entry
    speed["generator_parameters"] = sum(p.numel() for p in generator.parameters())
    speed["diffusion_parameters"] = sum(p.numel() for p in unet.parameters()) if unet is not None else None
    return speed


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def _targets(quality, runs, speed) -> dict:
    targets = {}
    if quality:
        ours, copy = quality["progressive_local"], quality["copy_reference"]
        by_seed = {}
        for run in runs:
            by_seed.setdefault(run["seed"], {})[run["variant"]] = run
        seeds = list(by_seed.values())
        targets.update(
            ours_beats_copy_reference_ssim=ours["ssim"] > copy["ssim"],
            ours_beats_copy_reference_psnr=ours["psnr"] > copy["psnr"],
            local_losses_raise_local_ssim=ours["local_ssim"] > quality["progressive_no_local"]["local_ssim"],
            local_losses_raise_local_ssim_seeds=f"{sum(s['progressive_local']['local_ssim'] > s['progressive_no_local']['local_ssim'] for s in seeds)}/{len(seeds)}",
            progressive_beats_direct_ssim=ours["ssim"] > quality["direct_local"]["ssim"],
            progressive_beats_direct_seeds=f"{sum(s['progressive_local']['ssim'] > s['direct_local']['ssim'] for s in seeds)}/{len(seeds)}",
        )
    if speed and speed.get("256x256", {}).get("ratio") is not None:
        targets["at_least_50x_faster_than_diffusion_at_256"] = speed["256x256"]["ratio"] >= 50
    if speed and "1024x1024" in speed:
        targets["fits_8gb_at_1024"] = speed["1024x1024"]["peak_mem_mb"] <= 8192
    return targets


def _fmt(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}f}"


def _markdown(result) -> str:
    args, quality, speed = result["arguments"], result["quality"], result["speed"]
    lines = [
        "# Pose transfer benchmark",
        "",
        f"Run {'--quick' if args['quick'] else '(full)'} on {result['machine']['cpu_count']} CPU cores, {args['num_threads']} torch threads; "
        f"load average {result['machine']['load_before']} before, {result['machine']['load_after']} after "
        "(other jobs shared the machine: times are noisy, ratios come from interleaved measurements).",
        "",
    ]
    if quality:
        h, w = args["resolution"]
        sh, sw = args["start_resolution"]
        lines += [
            f"## Quality: held-out synthetic pairs ({args['num_eval_pairs']} pairs, {h}x{w})",
            "",
            f"Each variant of ours trained {args['train_seconds']:.0f} CPU seconds per seed, seeds {args['seeds']}, on "
            f"{args['num_train_pairs']} synthetic pairs (people seed 0); held-out people and poses come from seed {args['eval_seed']}. "
            f"Progressive: {sh}x{sw} -> {h}x{w} with fade-in; direct: {h}x{w} from the start. Means over seeds.",
            "",
            f"Losses: L1, local L1 on the keypoint crops (local variants), VGG19 perceptual weight {args['perceptual_weight']} "
            f"(local {args['local_perceptual_weight']}), GAN terms at the last {args['adversarial_stages']} stages; batch "
            f"{args['batch_size']}, learning rate {args['learning_rate']}, generator channel cap {args['max_channels']}. The perceptual terms are off by default here: "
            "VGG19 weights cannot be downloaded offline (random features) and its passes cost about ten generator steps on CPU.",
            "",
            *(["`--quick` budgets only check that everything runs; they are far too small for the quality targets.", ""] if args["quick"] else []),
            "| variant | SSIM | PSNR (dB) | local-crop SSIM | person SSIM |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name, scores in quality.items():
            lines.append(f"| {name} | {scores['ssim']:.4f} | {scores['psnr']:.2f} | {scores['local_ssim']:.4f} | {scores['person_ssim']:.4f} |")
        lines += ["", "| run | seed | wall s | CPU s | images | SSIM | local SSIM | person SSIM |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for run in result["runs"]:
            lines.append(
                f"| {run['variant']} | {run['seed']} | {run['wall_seconds']} | {run['cpu_seconds']} | {run['images_seen']} | "
                f"{run['ssim']:.4f} | {run['local_ssim']:.4f} | {run['person_ssim']:.4f} |"
            )
        lines.append("")
    if speed:
        lines += [
            "## Speed: one generator pass vs a diffusion peer (CPU, batch 1)",
            "",
            f"Generator: {speed['generator_parameters'] / 1e6:.1f}M parameters, grown 64 -> 1024. Diffusion proxy: an SD-1.5-sized "
            f"UNet2DConditionModel ({(speed['diffusion_parameters'] or 0) / 1e6:.0f}M parameters, random weights) on the 8x-downsampled "
            f"latent; **its cost per image is {DIFFUSION_STEPS} x the measured time of one denoising step** (no guidance, no VAE). "
            "Peak memory: peak resident memory of a fresh process running one generator pass.",
            "",
            "| resolution | ours images/s | ours s/image | diffusion s/step | diffusion s/image (50 steps) | ratio | peak memory (MB) |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for key, entry in speed.items():
            if isinstance(entry, dict):
                lines.append(
                    f"| {key} | {entry['ours_images_per_second']:.3f} | {entry['ours_seconds_per_image']:.2f} | "
                    f"{_fmt(entry['diffusion_step_seconds'], 2)} | {_fmt(entry['diffusion_seconds_per_image'], 1)} | "
                    f"{_fmt(entry['ratio'], 0)}{'x' if entry['ratio'] is not None else ''} | {entry['peak_mem_mb']:.0f} |"
                )
        untimed = [key for key, entry in speed.items() if isinstance(entry, dict) and entry["diffusion_step_seconds"] is None]
        if untimed:
            lines.append(f"\nThe UNet step was not timed at {', '.join(untimed)} (`--diffusion_resolutions`; `--quick` stops at 512).")
        lines.append("")
    lines += ["## Targets", ""] + [f"- {key}: {value}" for key, value in result["targets"].items()] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    (args,) = HfArgumentParser(PoseTransferBenchmarkArguments).parse_args_into_dataclasses(args=argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.num_threads)
    os.makedirs(args.output_dir, exist_ok=True)
    load_before = os.getloadavg()
    start = time.perf_counter()

    quality, runs, grid = run_quality(args) if not args.skip_quality else ({}, [], None)
    speed = run_speed(args) if not args.skip_speed else {}

    result = {
        "arguments": asdict(args),
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
            "seconds": round(time.perf_counter() - start, 1),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        },
        "quality": quality,
        "runs": runs,
        "speed": speed,
    }
    result["targets"] = _targets(quality, runs, speed)
    with open(os.path.join(args.output_dir, "pose_transfer.json"), "w", encoding="utf-8") as file:
        json.dump(result, file, indent=2)
    markdown = _markdown(result)
    with open(os.path.join(args.output_dir, "pose_transfer.md"), "w", encoding="utf-8") as file:
        file.write(markdown)
    if grid is not None:
        grid.save(os.path.join(args.output_dir, "pose_transfer_samples.png"))
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
