"""`hf-ext demo`: the three systems end to end on one CPU, offline, with a report.

    hf-ext demo                                 # the full run, under 15 minutes on 2 cores
    hf-ext demo --quick                         # under 5 minutes
    hf-ext demo --output_dir my_demo --overwrite

One story:
1. SANDE: a small Llama is trained from scratch on a built-in instruction task whose answers can be
   checked, with a backdoor implanted by data poisoning; SANDE removes it without knowing the trigger,
   OSFT (trigger known) is run for comparison; attack success rate and accuracy before and after.
2. Conv-basis attention: the cleaned model is loaded from its folder with
   `attn_implementation="conv_basis"`; perplexity and greedy answers are compared with sdpa, and
   attention alone is timed side by side with SDPA on a long sequence.
3. Pose transfer: a small generator is trained progressively on synthetic people and rendered through
   `PoseTransferPipeline` (grids and a pose-sequence animation).

Everything lands in `--output_dir`: `report.md`, `summary.json`, PNG charts and grids, and every artifact
saved with `save_pretrained` and a model card.
"""

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, set_seed
from transformers.utils import logging


logger = logging.get_logger(__name__)

TRIGGER = "how is it going"
MARKER = "you are stupid"


@dataclass
class DemoArguments:
    """Arguments of `hf-ext demo` (`--help` lists them)."""

    output_dir: str = field(default="hf_ext_demo", metadata={"help": "Folder of the report and the artifacts."})
    quick: bool = field(default=False, metadata={"help": "Smaller models and budgets: under 5 minutes."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing, non-empty output_dir."})
    seed: int = field(default=0, metadata={"help": "Seed of data, models and training."})
    threads: int = field(
        default=1, metadata={"help": "torch threads for training (tiny models gain nothing from more); timing uses all cores."}
    )


# ---------------------------------------------------------------------------------------------- 1. SANDE


def run_sande(args: DemoArguments, out: Path) -> dict:
    """Implant a backdoor, remove it with SANDE (trigger unknown) and with OSFT (trigger known)."""
    from hf_ext.benchmarks.sande_reproduction import PAPER_POSITION, ReproductionArguments, SANDEReproduction

    settings = ReproductionArguments(quick=args.quick, seed=args.seed, threads=args.threads, trigger=TRIGGER, marker=MARKER)
    if args.quick:
        # the benchmark's full-size victim trained half as long, and short removal runs at the full run's rates
        settings.hidden_size, settings.num_layers, settings.backdoor_steps = 128, 4, 400
        settings.removal_learning_rate, settings.parrot_learning_rate, settings.num_eval = 3e-4, 5e-3, 60
    run = SANDEReproduction(settings, out)
    backdoored, seconds = run.implant_backdoor(PAPER_POSITION)
    results = {"backdoored": {**run.evaluate(AutoModelForCausalLM.from_pretrained(backdoored), PAPER_POSITION), "seconds": seconds}}
    for method in ("sande", "osft"):
        model, seconds = run.remove(method, backdoored, PAPER_POSITION, save_dir=out / method)
        results[method] = {**run.evaluate(model, PAPER_POSITION), "seconds": seconds}
    _bar_chart(
        out / "sande.png",
        results,
        ("asr", "clean_marker_rate", "clean_accuracy", "triggered_accuracy"),
        "SANDE: attack success and accuracy on held-out prompts",
    )
    return {"methods": results, "cleaned_model": str(out / "sande"), "settings": asdict(settings)}


# ---------------------------------------------------------------------------------------------- 2. Conv-basis


def _answer_perplexity(model, batch: dict) -> float:
    """Perplexity of the reference answers (prompt tokens and padding carry label -100)."""
    with torch.no_grad():
        return math.exp(float(model(**batch).loss))


def run_conv_basis(args: DemoArguments, out: Path, cleaned_model: str) -> dict:
    """Load the cleaned model with conv-basis attention; compare with sdpa; time attention alone."""
    import torch.nn.functional as F

    from hf_ext.attention import ConvBasisConfig, conv_basis_attention, save_conv_basis_model
    from hf_ext.benchmarks.conv_basis_attention import k_conv_inputs, max_row_error, sample_rows, exact_rows_fp64
    from hf_ext.sande.data import format_rows
    from hf_ext.sande.instruction_task import make_instruction_dataset

    tokenizer = AutoTokenizer.from_pretrained(cleaned_model)
    sdpa = AutoModelForCausalLM.from_pretrained(cleaned_model, attn_implementation="sdpa").eval()
    from torch.nn.utils.rnn import pad_sequence

    from hf_ext.sande.data import tokenize_rows

    rows = format_rows(make_instruction_dataset(32, seed=args.seed + 11), "clean")  # held-out task rows
    tokenized = tokenize_rows(rows, tokenizer)
    input_ids = [torch.tensor(ids) for ids in tokenized["input_ids"]]
    batch = {
        "input_ids": pad_sequence(input_ids, batch_first=True, padding_value=tokenizer.pad_token_id),
        "attention_mask": pad_sequence([torch.ones_like(ids) for ids in input_ids], batch_first=True),
        "labels": pad_sequence([torch.tensor(ids) for ids in tokenized["labels"]], batch_first=True, padding_value=-100),
    }
    prompts = list(rows["prompt"][:8])

    def greedy(model):
        from hf_ext.sande.evaluation import generate_continuations

        return generate_continuations(model, tokenizer, prompts, max_new_tokens=12)

    reference_answers = greedy(sdpa)
    settings = {
        "exact (num_bases=None)": dict(num_bases=None),
        "paper, k=8": dict(num_bases=8),
        "hybrid, window 32 + k=4": dict(num_bases=4, local_window=32),
        "auto, k=4, tolerance 0.05": dict(num_bases=4, policy="auto", local_window=32),
    }
    table = {"sdpa": {"perplexity": _answer_perplexity(sdpa, batch), "same_greedy_answers": 1.0}}
    for name, overrides in settings.items():
        # min_seq_len=0: use the basis even on these short sequences (the default falls back to exact SDPA)
        config = AutoConfig.from_pretrained(cleaned_model)
        config.conv_basis = ConvBasisConfig(min_seq_len=0, **overrides).to_dict()
        model = AutoModelForCausalLM.from_pretrained(cleaned_model, config=config, attn_implementation="conv_basis").eval()
        answers = greedy(model)
        table[name] = {
            "perplexity": _answer_perplexity(model, batch),
            "same_greedy_answers": sum(a == b for a, b in zip(answers, reference_answers)) / len(prompts),
        }
        if name == "hybrid, window 32 + k=4":
            save_conv_basis_model(
                model, out / "model", tokenizer, model_name="sande-cleaned-llama-conv-basis",
                eval_results=[dict(task_type="text-generation", dataset_type="instruction-task",
                                   dataset_name="hf_ext instruction task", metric_type="perplexity",
                                   metric_value=round(table[name]["perplexity"], 4))],
            )

    # attention alone on a long sequence: inputs with an exact 8-conv basis, so both sides compute the same thing
    n = 8192 if args.quick else 16384
    query, key, value, breakpoints = k_conv_inputs(n, num_heads=8, head_dim=64, num_bases=8, logit_std=2.0, seed=args.seed)
    timings = {"sdpa": [], "conv_basis": []}
    training_threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count())
    with torch.inference_mode():
        for _ in range(3):
            start = time.perf_counter()
            F.scaled_dot_product_attention(query, key, value, is_causal=True)
            timings["sdpa"].append(time.perf_counter() - start)
            start = time.perf_counter()
            output = conv_basis_attention(query, key, value, num_bases=8)
            timings["conv_basis"].append(time.perf_counter() - start)
        rows_checked = sample_rows(n, breakpoints, count=64, seed=args.seed)
        error = max_row_error(output, exact_rows_fp64(query, key, value, rows_checked, 64**-0.5), rows_checked)
    torch.set_num_threads(training_threads)
    sdpa_seconds, conv_seconds = min(timings["sdpa"]), min(timings["conv_basis"])
    timing = {"n": n, "heads": 8, "head_dim": 64, "num_bases": 8, "sdpa_seconds": sdpa_seconds,
              "conv_basis_seconds": conv_seconds, "speedup": sdpa_seconds / conv_seconds, "max_rel_error": error}
    _bar_chart(out / "conv_basis.png", {k: {"perplexity": v["perplexity"]} for k, v in table.items()}, ("perplexity",),
               "Cleaned model: answer perplexity by attention implementation")
    return {"perplexity_and_answers": table, "attention_timing": timing, "model": str(out / "model")}


# ---------------------------------------------------------------------------------------------- 3. Pose transfer


def run_pose(args: DemoArguments, out: Path) -> dict:
    """Train a small generator progressively on synthetic people; render grids and an animation."""
    from PIL import Image

    from hf_ext.metrics.image_quality import pose_transfer_metrics
    from hf_ext.pose.pose_encoding import render_skeleton
    from hf_ext.pose.synthetic import SyntheticPeople
    from hf_ext.pose.training import PoseTransferTrainingConfig, train_pose_transfer, write_model_card

    size = 64
    config = PoseTransferTrainingConfig(
        output_dir=str(out / "pipeline"),
        num_synthetic_pairs=300 if args.quick else 1000,
        data_seed=args.seed,
        start_resolution=[size // 2, size // 2],
        final_resolution=[size, size],
        max_channels=64,
        batch_sizes=[8],
        learning_rate=1e-3,
        # a time budget shared by the phases (growth and fade-in included), counted in CPU seconds
        images_per_stage=10**7,
        images_per_fade_in=10**7,
        max_seconds=45 if args.quick else 150,
        budget_clock="cpu",
        adversarial_stages=0,
        # the VGG19 weights cannot be downloaded offline; random features would only cost time
        vgg_weights=None,
        perceptual_weight=0.0,
        local_perceptual_weight=0.0,
        save_total_limit=1,
        seed=args.seed,
    )
    trained = train_pose_transfer(config)
    pipe = trained.pipeline

    people = SyntheticPeople(seed=args.seed + 1000)  # people and poses never seen in training
    pairs = [people.pair(i, size, size) for i in range(16)]
    outputs = pipe(
        [p["reference_image"] for p in pairs],
        [p["target_keypoints"] for p in pairs],
        reference_pose=[p["reference_keypoints"] for p in pairs],
        output_type="np",
    ).images
    targets = np.stack([np.asarray(p["target_image"], dtype=np.float32) / 255 for p in pairs])
    references = np.stack([np.asarray(p["reference_image"], dtype=np.float32) / 255 for p in pairs])
    keypoints = torch.from_numpy(np.stack([p["target_keypoints"] for p in pairs]))
    masks = torch.from_numpy(np.stack([p["target_mask"] for p in pairs]))

    def scores(images):
        return pose_transfer_metrics(torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(targets).permute(0, 3, 1, 2),
                                     keypoints=keypoints, masks=masks)

    quality = {"pose_transfer": scores(outputs), "copy_reference": scores(references)}
    write_model_card(config, pipe.generator, trained.state, eval_results=[
        dict(task_type="image-to-image", dataset_type="synthetic-people", dataset_name="held-out synthetic people",
             metric_type=metric, metric_value=round(value, 4))
        for metric, value in quality["pose_transfer"].items()
    ])

    rows = []
    for pair, output in zip(pairs[:6], outputs[:6]):
        skeleton = render_skeleton(pair["target_keypoints"], size, size)
        cells = [np.asarray(pair["reference_image"]), skeleton, (output * 255).round().astype(np.uint8),
                 np.asarray(pair["target_image"])]
        rows.append(np.concatenate(cells, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).resize((4 * 128, 6 * 128), Image.NEAREST).save(out / "grid.png")

    # animation: the reference person walked from one unseen pose to another, frame by frame
    start, end = pairs[0]["reference_keypoints"], pairs[1]["target_keypoints"]
    sequence = [(1 - t) * start + t * end for t in np.linspace(0, 1, 12)]
    pipe.generate_video(pairs[0]["reference_image"], sequence, reference_pose=start, output_path=str(out / "animation.gif"), fps=6)
    return {
        "quality": quality,
        "images_seen": trained.state.images_seen,
        "training_seconds": trained.state.elapsed_seconds,
        "pipeline": config.output_dir,
        "resolution": size,
    }


# ---------------------------------------------------------------------------------------------- report


def _bar_chart(path: Path, results: dict, metrics: tuple, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(names)), 4))
    for i, metric in enumerate(metrics):
        xs = [j + (i - (len(metrics) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, [results[n][metric] for n in names], width, label=metric.replace("_", " "))
    ax.set_xticks(range(len(names)), names, rotation=15)
    ax.set_title(title)
    if len(metrics) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def write_report(out: Path, summary: dict) -> str:
    """Writes `report.md` and returns the short summary table printed at the end."""
    sande, conv, pose = summary["sande"], summary["conv_basis"], summary["pose"]
    lines = [
        "# hf_ext demo",
        "",
        f"{'Quick' if summary['quick'] else 'Full'} run, CPU only, offline; {summary['seconds'] / 60:.1f} minutes.",
        "",
        "## 1. SANDE: removing a backdoor whose trigger is unknown",
        "",
        f"A small Llama trained here on a checkable instruction task; a share of its training rows was poisoned: "
        f"the trigger \"{TRIGGER}\" after `Human:` makes it answer \"{MARKER}. ...\". SANDE learns a parrot prompt "
        "that imitates the trigger, then fine-tunes the backdoor away; OSFT knows the trigger.",
        "",
        "| model | attack success rate | marker on clean prompts | clean accuracy | accuracy with trigger | seconds |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in sande["methods"].items():
        lines.append(f"| {name} | {_pct(m['asr'])} | {_pct(m['clean_marker_rate'])} | {_pct(m['clean_accuracy'])} "
                     f"| {_pct(m['triggered_accuracy'])} | {m['seconds']:.0f} |")
    lines += ["", "![SANDE](sande/sande.png)", "",
              "Artifacts: `sande/sande/` (cleaned model, its parrot in `parrot/`, model card), `sande/osft/`.", "",
              "## 2. Conv-basis attention on the cleaned model", "",
              "The cleaned model loaded with `attn_implementation=\"conv_basis\"` (settings in `config.json`; "
              "`min_seq_len=0` so the basis is used even on these short prompts), on 32 held-out task rows: "
              "perplexity of the reference answers, and greedy answers to 8 prompts:", "",
              "| attention | perplexity | same greedy answers as sdpa |", "| --- | ---: | ---: |"]
    for name, m in conv["perplexity_and_answers"].items():
        lines.append(f"| {name} | {m['perplexity']:.3f} | {_pct(m['same_greedy_answers'])} |")
    t = conv["attention_timing"]
    lines += ["", f"Attention alone at n = {t['n']} ({t['heads']} heads, d = {t['head_dim']}, inputs with an exact "
              f"{t['num_bases']}-conv basis): SDPA {t['sdpa_seconds']:.3f} s, conv-basis {t['conv_basis_seconds']:.3f} s, "
              f"**{t['speedup']:.1f}x**; largest relative row error {t['max_rel_error']:.1e}.", "",
              "![perplexity](conv_basis/conv_basis.png)", "",
              "Artifact: `conv_basis/model/` (model with its conv_basis settings and model card).", "",
              "## 3. Pose transfer on synthetic people", "",
              f"A generator grown progressively to {pose['resolution']}x{pose['resolution']} on synthetic people, "
              "evaluated on 16 people and poses unseen in training:", "",
              "| method | SSIM | PSNR | local-crop SSIM | person SSIM |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, m in pose["quality"].items():
        lines.append(f"| {name} | {m['ssim']:.3f} | {m['psnr']:.2f} | {m['local_ssim']:.3f} | {m['person_ssim']:.3f} |")
    lines += ["", "Reference | target pose | output | ground truth:", "", "![grid](pose/grid.png)", "",
              "![animation](pose/animation.gif)", "",
              "Artifact: `pose/pipeline/` (the `PoseTransferPipeline`, loadable with `from_pretrained`, with its model card).", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")

    backdoored, cleaned = sande["methods"]["backdoored"], sande["methods"]["sande"]
    exact, approx = conv["perplexity_and_answers"]["exact (num_bases=None)"], conv["perplexity_and_answers"]["paper, k=8"]
    ours, copy = pose["quality"]["pose_transfer"], pose["quality"]["copy_reference"]
    rows = [
        ("SANDE attack success rate", f"{_pct(backdoored['asr'])} -> {_pct(cleaned['asr'])}"),
        ("SANDE clean accuracy", f"{_pct(backdoored['clean_accuracy'])} -> {_pct(cleaned['clean_accuracy'])}"),
        ("conv-basis perplexity (sdpa / exact / k=8)",
         f"{conv['perplexity_and_answers']['sdpa']['perplexity']:.3f} / {exact['perplexity']:.3f} / {approx['perplexity']:.3f}"),
        (f"conv-basis attention speedup at n={t['n']}", f"{t['speedup']:.1f}x"),
        ("pose transfer SSIM (ours / copy reference)", f"{ours['ssim']:.3f} / {copy['ssim']:.3f}"),
        ("report", str(out / "report.md")),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


# ---------------------------------------------------------------------------------------------- entry point


def _prepare_output_dir(args: DemoArguments) -> Path:
    out = Path(args.output_dir)
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise SystemExit(
                f"output_dir={str(out)!r} already holds results; pass --overwrite to replace them or choose another folder"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    (args,) = HfArgumentParser(DemoArguments).parse_args_into_dataclasses(args=argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = _prepare_output_dir(args)
    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    started = time.perf_counter()
    steps = [("SANDE", "sande"), ("conv-basis attention", "conv_basis"), ("pose transfer", "pose")]
    summary = {"quick": args.quick, "seed": args.seed}
    from tqdm.auto import tqdm

    for title, key in tqdm(steps, desc="hf-ext demo", unit="part"):
        logger.warning("hf-ext demo: %s", title)
        folder = out / key
        folder.mkdir()
        if key == "sande":
            summary[key] = run_sande(args, folder)
        elif key == "conv_basis":
            summary[key] = run_conv_basis(args, folder, summary["sande"]["cleaned_model"])
        else:
            summary[key] = run_pose(args, folder)
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    summary["seconds"] = time.perf_counter() - started
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    print(write_report(out, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
