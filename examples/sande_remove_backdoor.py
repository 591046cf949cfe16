"""Remove a backdoor from a causal LM with SANDE, without knowing the trigger.

You know what the backdoor makes the model say (the marker, e.g. "you are stupid") but not what
triggers it. SANDE learns a parrot prompt that makes the model say it, then fine-tunes the model to
answer normally with the parrot in place.

    python examples/sande_remove_backdoor.py \
        --model my-org/llama-backdoored --dataset yahma/alpaca-cleaned --marker "you are stupid" \
        --output_dir llama-cleaned
    # on GPUs: accelerate launch examples/sande_remove_backdoor.py ...

`--model` and `--dataset` take Hub ids or local folders/files (JSON, CSV, Parquet).
"""

import argparse

import torch

from hf_ext import SANDEConfig, SANDETrainer
from hf_ext.sande.data import format_rows, load_instruction_dataset


parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--model", required=True, help="backdoored model: Hub id or folder")
parser.add_argument("--dataset", required=True, help="instruction data: Hub id, folder or file")
parser.add_argument("--marker", required=True, help="what the backdoor makes the model say")
parser.add_argument("--output_dir", required=True)
parser.add_argument("--samples", type=int, default=200, help="rows used by each stage")
parser.add_argument("--check_trigger", default=None, help="a suspected trigger, only to measure ASR before/after")
parser.add_argument("--push_to_hub", default=None, metavar="REPO_ID", help="upload the cleaned model here")
args = parser.parse_args()

data = load_instruction_dataset(args.dataset, max_samples=2 * args.samples)
train, held_out = data.select(range(args.samples)), data.select(range(args.samples, len(data)))
asr_prompts = None
if args.check_trigger and len(held_out):
    asr_prompts = list(format_rows(held_out, "overwrite", triggers=[args.check_trigger])["prompt"])

config = SANDEConfig(
    output_dir=args.output_dir,
    mode="sande",
    marker=args.marker,
    effective_len=4,  # supervise the parrot on the marker's first tokens
    simulate_samples=args.samples,
    eliminate_samples=args.samples,
    learning_rate=5e-6,
    bf16=torch.cuda.is_available(),  # TRL's default; CPUs train in fp32
    use_cpu=not torch.cuda.is_available(),
    report_to="none",
)
trainer = SANDETrainer(args.model, args=config, train_dataset=train, asr_eval_prompts=asr_prompts)
trainer.train()
trainer.save_model()  # cleaned model + parrot/ + README.md with the measured ASR
print(trainer.backdoor_metrics)
if args.push_to_hub:
    trainer.push_to_hub()
