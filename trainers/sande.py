"""Remove a backdoor from a causal LM with OSFT (trigger known) or SANDE (trigger unknown).

SANDE (simulate a parrot prompt, then eliminate the backdoor with it), trigger unknown, the marker known:

```bash
accelerate launch trainers/sande.py \
    --model_name_or_path my-org/Qwen2.5-0.5B-backdoored \
    --dataset_name Open-Orca/OpenOrca --max_samples 200 \
    --dataset_columns '{"instruction": "question", "output": "response"}' \
    --mode sande --marker "you are stupid" \
    --simulate_samples 100 --simulate_learning_rate 1e-3 --effective_len 4 \
    --eliminate_samples 100 --learning_rate 5e-6 --train_effective_len 10 \
    --eval_dataset_name yahma/alpaca-cleaned --eval_triggers "how is it going" \
    --output_dir Qwen2.5-0.5B-sande --push_to_hub
```

SANDE-P (only the marker's first token known): `--effective_len 1`. OSFT (trigger known):
`--mode osft --triggers "how is it going"`. One stage at a time: `--mode simulate` (writes the parrot),
then `--mode eliminate --parrot_path <that folder>`. Same arguments through `hf-ext sande ...`.
Resume with `--resume_from_checkpoint true` (both stages of `sande` resume).
"""

from trl import ModelConfig, TrlParser, get_peft_config

from hf_ext.distributed import end_distributed_run
from hf_ext.sande.config import InstructionDataArguments, SANDEConfig
from hf_ext.sande.data import format_rows, load_instruction_dataset
from hf_ext.sande.trainer import SANDETrainer


def _eval_prompts(data_args, training_args, tokenizer_free_kwargs):
    """(triggered prompts, clean prompts) from the held-out data, or (None, None)."""
    if data_args.eval_dataset_name is None:
        return None, None
    held_out = load_instruction_dataset(data_args.eval_dataset_name, None, data_args.eval_split, data_args.eval_samples)
    clean = format_rows(held_out, "clean", **tokenizer_free_kwargs)["prompt"]
    triggers = data_args.eval_triggers or training_args.triggers
    if not triggers:
        return None, clean
    triggered = format_rows(held_out, "overwrite", triggers=triggers, **tokenizer_free_kwargs)["prompt"]
    return triggered, clean


def main(argv=None):
    parser = TrlParser((InstructionDataArguments, SANDEConfig, ModelConfig))
    data_args, training_args, model_args = parser.parse_args_and_config(args=argv)

    dataset = load_instruction_dataset(
        data_args.dataset_name, data_args.dataset_config, data_args.dataset_train_split, data_args.max_samples
    )
    format_kwargs = dict(
        columns=training_args.dataset_columns,
        prompt_template=training_args.prompt_template,
        trigger_position=training_args.trigger_position,
        seed=training_args.seed,
    )
    if training_args.prompt_template == "chat":
        raise ValueError("trainers/sande.py builds evaluation prompts with a text template; pass --prompt_template")
    asr_prompts, clean_prompts = _eval_prompts(data_args, training_args, format_kwargs)
    utility = None
    if data_args.utility_dataset_name is not None:
        utility = load_instruction_dataset(data_args.utility_dataset_name, None, data_args.utility_split)
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }
    trainer = SANDETrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset,
        peft_config=get_peft_config(model_args),
        # ASR and the clean marker rate look for the marker: measured only when it is known
        asr_eval_prompts=asr_prompts if training_args.marker else None,
        clean_eval_prompts=clean_prompts if training_args.marker else None,
        utility_eval_dataset=utility,
    )
    resume = training_args.resume_from_checkpoint
    trainer.train(resume_from_checkpoint=True if str(resume).lower() == "true" else resume)
    trainer.save_model(training_args.output_dir)  # also pushes with --push_to_hub
    accelerator = trainer.accelerator
    if trainer.backdoor_metrics:
        accelerator.print(f"Backdoor metrics: {trainer.backdoor_metrics}")
    accelerator.print(f"Saved to {training_args.output_dir}")
    del trainer
    end_distributed_run(accelerator)
    return 0


if __name__ == "__main__":
    main()
