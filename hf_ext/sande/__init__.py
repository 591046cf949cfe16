"""SANDE and OSFT backdoor removal for causal LMs (Li et al., AAAI 2025) on top of TRL.

- `backdoor`: `backdoor_trainer`, implanting a backdoor by data poisoning (victim models for research).
- `data`: rows (poisoned / clean / overwrite / simulation / eliminate) from instruction data.
- `parrot`: `ParrotPrompt`, the soft trigger spliced into prompts.
- `config`, `trainer`: `SANDEConfig(SFTConfig)`, `SANDETrainer(SFTTrainer)` with modes osft / simulate /
  eliminate / sande.
- `evaluation`: attack success rate, false-trigger rate, multiple-choice utility.
- `instruction_task`: a checkable instruction task (exact answers) and a small Llama trained on it.
"""

from .backdoor import backdoor_trainer
from .config import SANDE_MODES, SANDEConfig
from .data import (
    DEFAULT_COMPLETION_TEMPLATE,
    DEFAULT_POISON_FORMAT,
    DEFAULT_PROMPT_TEMPLATE,
    ROW_KINDS,
    TRIGGER_POSITIONS,
    format_rows,
    load_instruction_dataset,
    make_backdoor_dataset,
    resolve_columns,
    tokenize_rows,
)
from .evaluation import (
    attack_success_rate,
    contains_marker,
    false_trigger_rate,
    format_multiple_choice,
    generate_continuations,
    multiple_choice_accuracy,
)
from .instruction_task import (
    TASK_KINDS,
    answer_accuracy,
    build_instruction_tokenizer,
    check_answer,
    make_instruction_dataset,
    make_instruction_splits,
    pretrain_instruction_model,
    tiny_llama_for,
)
from .parrot import ParrotPrompt
from .trainer import SANDETrainer


__all__ = [
    "TASK_KINDS",
    "answer_accuracy",
    "build_instruction_tokenizer",
    "check_answer",
    "make_instruction_dataset",
    "make_instruction_splits",
    "pretrain_instruction_model",
    "tiny_llama_for",
    "DEFAULT_COMPLETION_TEMPLATE",
    "DEFAULT_POISON_FORMAT",
    "DEFAULT_PROMPT_TEMPLATE",
    "ROW_KINDS",
    "SANDE_MODES",
    "TRIGGER_POSITIONS",
    "ParrotPrompt",
    "SANDEConfig",
    "SANDETrainer",
    "attack_success_rate",
    "backdoor_trainer",
    "contains_marker",
    "false_trigger_rate",
    "format_multiple_choice",
    "format_rows",
    "generate_continuations",
    "load_instruction_dataset",
    "make_backdoor_dataset",
    "multiple_choice_accuracy",
    "resolve_columns",
    "tokenize_rows",
]
