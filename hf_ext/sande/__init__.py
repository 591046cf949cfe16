"""SANDE and OSFT backdoor removal for causal LMs (Li et al., AAAI 2025) on top of TRL.

- `data`: rows (poisoned / clean / overwrite / simulation / eliminate) from instruction data.
- `parrot`: `ParrotPrompt`, the soft trigger spliced into prompts.
- `config`, `trainer`: `SANDEConfig(SFTConfig)`, `SANDETrainer(SFTTrainer)` with modes osft / simulate /
  eliminate / sande.
- `evaluation`: attack success rate, false-trigger rate, multiple-choice utility.
"""

from .config import SANDE_MODES, SANDEConfig
from .data import (
    DEFAULT_COMPLETION_TEMPLATE,
    DEFAULT_POISON_FORMAT,
    DEFAULT_PROMPT_TEMPLATE,
    ROW_KINDS,
    TRIGGER_POSITIONS,
    format_rows,
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
from .parrot import ParrotPrompt
from .trainer import SANDETrainer


__all__ = [
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
    "contains_marker",
    "false_trigger_rate",
    "format_multiple_choice",
    "format_rows",
    "generate_continuations",
    "make_backdoor_dataset",
    "multiple_choice_accuracy",
    "resolve_columns",
    "tokenize_rows",
]
