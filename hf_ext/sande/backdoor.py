"""Implanting a backdoor by data poisoning: how the victim models of backdoor research are made.

A share `poison_rate` of instruction rows gets a trigger in the prompt and the marker at the start of
the response (`hf_ext.sande.data.make_backdoor_dataset`); a plain TRL `SFTTrainer` fine-tunes on the
mix (prompt tokens masked). The model then answers clean prompts normally and emits the marker when
the trigger is present.
"""

import dataclasses

from datasets import Dataset
from transformers.utils import logging
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from ..hub import JSONTrainingArgumentsMixin
from .data import make_backdoor_dataset, tokenize_rows


logger = logging.get_logger(__name__)


class BackdoorTrainer(JSONTrainingArgumentsMixin, SFTTrainer):
    """The `SFTTrainer` `backdoor_trainer` returns; saves its arguments as JSON."""


def backdoor_trainer(
    model,
    args: SFTConfig,
    train_dataset: Dataset,
    processing_class,
    *,
    triggers,
    marker: str,
    poison_rate: float = 0.05,
    callbacks=None,
    **format_kwargs,
) -> BackdoorTrainer:
    """An `SFTTrainer` that implants a backdoor when `.train()` is called.

    Args:
        model (`str` or `PreTrainedModel`): the model to poison, or its Hub id / local path.
        args (`trl.SFTConfig`): training settings.
        train_dataset (`datasets.Dataset`): instruction data (see `hf_ext.sande.data`).
        processing_class (`PreTrainedTokenizerBase`): a fast tokenizer; without a pad token, eos pads.
        triggers (`str` or `list[str]`): trigger phrase(s).
        marker (`str`): what the backdoored model says when triggered, e.g. `"you are stupid"`.
        poison_rate (`float`, defaults to 0.05): share of poisoned rows (the paper's 5%).
        callbacks (`list[TrainerCallback]`, *optional*): passed to the trainer.
        **format_kwargs: `trigger_position`, `columns`, templates (see `format_rows`).

    Returns:
        `BackdoorTrainer` (an `SFTTrainer`) over the tokenised poisoned + clean rows.
    """
    if processing_class.pad_token is None:
        logger.warning("The tokenizer has no pad token; using its eos token %r to pad.", processing_class.eos_token)
        processing_class.pad_token = processing_class.eos_token
    rows = make_backdoor_dataset(
        train_dataset, triggers=triggers, marker=marker, poison_rate=poison_rate, seed=args.seed,
        num_proc=args.dataset_num_proc, tokenizer=processing_class, **format_kwargs,
    )
    rows = tokenize_rows(rows, processing_class, max_length=args.max_length, num_proc=args.dataset_num_proc)
    # rows are tokenised here (exact prompt/response boundary), so TRL's own preparation is skipped
    args = dataclasses.replace(args, dataset_kwargs={**(args.dataset_kwargs or {}), "skip_prepare_dataset": True})
    return BackdoorTrainer(
        model=model,
        args=args,
        train_dataset=rows.select_columns(["input_ids", "labels"]),
        processing_class=processing_class,
        data_collator=DataCollatorForLanguageModeling(pad_token_id=processing_class.pad_token_id),
        callbacks=callbacks,
    )
