"""The `hf-ext` command.

    hf-ext env                     versions of torch and the HF libraries, conv_basis registration
    hf-ext demo [...]              the end-to-end demo of the three systems
    hf-ext sande [...]             SANDE / OSFT backdoor removal (same arguments as trainers/sande.py)
    hf-ext pose [...]              pose-transfer training (same arguments as trainers/pose_transfer.py)
    hf-ext conv-basis-report [...] how well a conv basis fits each attention head of a model
    hf-ext bench NAME [...]        run a benchmark from benchmarks/

Every subcommand but `env` forwards its remaining arguments to the `main(argv)` of
the module that implements it, so `hf-ext sande --help` shows the script's own help.
"""

import argparse
import importlib
import importlib.metadata
import platform
import sys

from . import __version__


# subcommand -> (module with `main(argv)`, one-line help)
_FORWARDED = {
    "demo": ("hf_ext.demo", "run the end-to-end demo of the three systems"),
    "sande": ("hf_ext.trainers.sande", "remove a backdoor with OSFT or SANDE"),
    "pose": ("hf_ext.trainers.pose_transfer", "train a progressive pose-transfer generator"),
    "conv-basis-report": ("hf_ext.attention.report", "report how well a conv basis fits each attention head"),
}

# benchmark name -> module
_BENCHMARKS = {
    "conv_basis": "hf_ext.benchmarks.conv_basis_attention",
    "sande": "hf_ext.benchmarks.sande_reproduction",
    "pose": "hf_ext.benchmarks.pose_transfer",
}

_ENV_PACKAGES = (
    "torch",
    "transformers",
    "trl",
    "peft",
    "diffusers",
    "accelerate",
    "datasets",
    "evaluate",
    "huggingface_hub",
    "safetensors",
    "tokenizers",
)


def env_info() -> dict[str, str]:
    """Versions and settings a bug report needs, like `transformers env` / `diffusers-cli env`."""
    import torch
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    info = {"hf_ext": __version__, "Platform": platform.platform(), "Python": platform.python_version()}
    for package in _ENV_PACKAGES:
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = "not installed"
    info["torch accelerator"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)"
    info["torch threads"] = str(torch.get_num_threads())
    info["conv_basis attention registered"] = str("conv_basis" in AttentionInterface())
    info["conv_basis mask registered"] = str("conv_basis" in AttentionMaskInterface())
    return info


def _run_env(args, rest) -> int:
    if rest:
        raise SystemExit(f"hf-ext env: unexpected arguments {rest}")
    print("\nCopy-and-paste the text below in your GitHub issue.\n")
    for key, value in env_info().items():
        print(f"- {key}: {value}")
    return 0


def _forward(module_name: str, argv: list[str]) -> int:
    main = importlib.import_module(module_name).main
    result = main(argv)
    return result if isinstance(result, int) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-ext",
        description="SANDE backdoor removal, conv-basis attention and progressive pose transfer for Hugging Face models.",
    )
    parser.add_argument("--version", action="version", version=f"hf-ext {__version__}")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    subcommands.add_parser("env", help="print versions of torch and the HF libraries")
    for name, (_, help_text) in _FORWARDED.items():
        subcommands.add_parser(name, help=help_text, add_help=False)
    # no -h of its own: `hf-ext bench sande --help` shows the benchmark's arguments
    bench = subcommands.add_parser("bench", help="run a benchmark (ours vs the peer, side by side)", add_help=False)
    bench.add_argument("benchmark", choices=sorted(_BENCHMARKS))
    return parser


def main(argv: list[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.command == "env":
        return _run_env(args, rest)
    if args.command == "bench":
        return _forward(_BENCHMARKS[args.benchmark], rest)
    return _forward(_FORWARDED[args.command][0], rest)


if __name__ == "__main__":
    sys.exit(main())
