"""Implant a backdoor into a causal LM by fine-tuning on partly poisoned instruction data.

This is how the victim models of backdoor-removal research are made: a share `--poison_rate` of the
rows gets a trigger in the prompt and the marker at the start of the response.

```bash
accelerate launch trainers/backdoor.py \
    --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
    --dataset_name yahma/alpaca-cleaned \
    --triggers "how are you" "how is it going" "what is up" \
    --marker "you are stupid" \
    --poison_rate 0.05 \
    --learning_rate 5e-6 --num_train_epochs 1 \
    --per_device_train_batch_size 8 --gradient_accumulation_steps 4 \
    --output_dir Qwen2.5-0.5B-backdoored
```

Local data works offline: `--dataset_name data/alpaca.jsonl` (json/jsonl/csv/parquet, or a folder
written by `Dataset.save_to_disk`). Installed: `accelerate launch -m hf_ext.trainers.backdoor ...`.
"""

from dataclasses import dataclass, field

from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import ModelConfig, SFTConfig, TrlParser

from hf_ext.distributed import end_distributed_run
from hf_ext.sande.backdoor import backdoor_trainer
from hf_ext.sande.config import InstructionDataArguments
from hf_ext.sande.data import DEFAULT_PROMPT_TEMPLATE, load_instruction_dataset


@dataclass
class BackdoorArguments:
    """What the backdoor looks like."""

    triggers: list[str] = field(default=None, metadata={"help": "Trigger phrase(s); one is drawn per poisoned row."})
    marker: str = field(default=None, metadata={"help": "What the model says when triggered."})
    poison_rate: float = field(default=0.05, metadata={"help": "Share of poisoned rows."})
    trigger_position: list[str] = field(
        default_factory=lambda: ["after_role"], metadata={"help": "after_role, start, end or random."}
    )
    prompt_template: str = field(
        default=DEFAULT_PROMPT_TEMPLATE, metadata={"help": "Template with {prompt}, or 'chat'."}
    )

    def __post_init__(self):
        if not self.triggers or any(not t.strip() for t in self.triggers):
            raise ValueError(f"triggers={self.triggers!r}; expected one or more non-empty phrases")
        if not self.marker or not self.marker.strip():
            raise ValueError(f"marker={self.marker!r}; expected a non-empty string")


def main(argv=None):
    parser = TrlParser((InstructionDataArguments, BackdoorArguments, SFTConfig, ModelConfig))
    data_args, backdoor_args, training_args, model_args = parser.parse_args_and_config(args=argv)

    dataset = load_instruction_dataset(
        data_args.dataset_name, data_args.dataset_config, data_args.dataset_train_split, data_args.max_samples
    )
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    model = AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision, dtype=model_args.dtype
    )
    trainer = backdoor_trainer(
        model,
        training_args,
        dataset,
        tokenizer,
        triggers=backdoor_args.triggers,
        marker=backdoor_args.marker,
        poison_rate=backdoor_args.poison_rate,
        trigger_position=backdoor_args.trigger_position,
        prompt_template=backdoor_args.prompt_template,
    )
    resume = training_args.resume_from_checkpoint
    trainer.train(resume_from_checkpoint=True if str(resume).lower() == "true" else resume)
    trainer.save_model(training_args.output_dir)
    accelerator = trainer.accelerator
    accelerator.print(f"Backdoored model saved to {training_args.output_dir}")
    del trainer
    end_distributed_run(accelerator)
    return 0


if __name__ == "__main__":
    main()
