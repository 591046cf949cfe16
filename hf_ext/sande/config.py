"""`SANDEConfig`: the settings of `SANDETrainer` on top of TRL's `SFTConfig`."""

from dataclasses import dataclass, field
from typing import Any

from trl import SFTConfig

from .data import DEFAULT_COMPLETION_TEMPLATE, DEFAULT_POISON_FORMAT, DEFAULT_PROMPT_TEMPLATE, TRIGGER_POSITIONS


SANDE_MODES = ("osft", "simulate", "eliminate", "sande")
TARGET_SOURCES = ("dataset", "self")


@dataclass
class SANDEConfig(SFTConfig):
    r"""
    Configuration class for the [`SANDETrainer`]: backdoor removal by OSFT (trigger known) or SANDE
    (trigger unknown: Simulate a parrot prompt, then Eliminate the backdoor with it).

    Only the parameters specific to backdoor removal are listed here; see [`~trl.SFTConfig`] and
    [`~transformers.TrainingArguments`] for the rest. The base `learning_rate`, `num_train_epochs` and
    `max_steps` drive `osft`, `eliminate` and the Eliminate stage of `sande`; the Simulate stage has its own.

    Parameters:
        > Parameters that control the method

        mode (`str`, *optional*, defaults to `"sande"`):
            `"osft"` (overwrite a known trigger's mapping with clean answers), `"simulate"` (learn a parrot
            prompt, the model frozen), `"eliminate"` (fine-tune the model with a given parrot frozen) or
            `"sande"` (simulate then eliminate in one call).
        triggers (`list[str]`, *optional*):
            Trigger phrase(s), needed by `osft` only.
        insert_trigger (`bool`, *optional*, defaults to `True`):
            In `osft`, insert a trigger into every prompt. With `False` the prompts must already contain one,
            and rows without a trigger are dropped.
        marker (`str`, *optional*):
            The start of the triggered response the defender knows (the marker, e.g. `"you are stupid"`).
            Needed by `simulate` and `sande`.
        trigger_position (`list[str]`, *optional*, defaults to `["after_role"]`):
            Where the trigger (`osft`) or the parrot (`simulate`, `eliminate`) goes: `after_role`, `start`,
            `end`, `random`. Several values spread the rows over those positions, which simulates at
            several candidate places when the trigger's place is unknown.
        target_source (`str`, *optional*, defaults to `"dataset"`):
            Clean responses from the dataset, or `"self"`: the backdoored model's own greedy answers to
            the clean prompts (no clean data or clean reference model needed).
        self_target_max_new_tokens (`int`, *optional*, defaults to `64`):
            Length of the model's own answers with `target_source="self"`.
        consistency_weight (`float`, *optional*, defaults to `0.0`):
            Weight of a clean-consistency term beyond the paper: KL(frozen starting model || model) on the
            response tokens of clean rows, to protect utility. Keeps a frozen copy of the model in memory.

        > Parameters that control the parrot prompt

        parrot_num_tokens (`int`, *optional*, defaults to `6`):
            Number of soft tokens `m` of a new parrot.
        parrot_init_text (`str`, *optional*):
            Initialise a new parrot from the token embeddings of this text (its token count sets `m`);
            zeros by default, as in the paper.
        parrot_path (`str`, *optional*):
            Folder or Hub id of a saved parrot: required by `eliminate`; resumes a parrot in `simulate`.
        effective_len (`int`, *optional*, defaults to `1`):
            Simulate: loss on the first `effective_len` tokens of the triggered response only. SANDE-P
            (only the marker's first tokens known) is `effective_len` = the known tokens.
        train_effective_len (`int`, *optional*, defaults to `10`):
            Eliminate: loss on the first `train_effective_len` response tokens. `None` uses every token.
        simulate_learning_rate (`float`, *optional*, defaults to `1e-3`):
            Learning rate of the parrot.
        simulate_num_train_epochs (`float`, *optional*, defaults to `1.0`):
            Epochs of the Simulate stage.
        simulate_max_steps (`int`, *optional*, defaults to `-1`):
            Steps of the Simulate stage; overrides `simulate_num_train_epochs` when positive.
        simulate_samples (`int`, *optional*):
            Rows used by the Simulate stage (the first N after a seeded shuffle); all by default.
        eliminate_samples (`int`, *optional*):
            Rows used by `osft`, `eliminate` and the Eliminate stage; all by default.
        eliminate_parrot_fraction (`float`, *optional*, defaults to `0.5`):
            Share of Eliminate rows that carry the parrot; the others are plain clean rows, which keeps
            clean accuracy (the official code's `output_clean_logits` variant).

        > Parameters that control the data

        dataset_columns (`dict[str, str]`, *optional*):
            Role -> column of the instruction data (`instruction`/`input`/`output`, `prompt`/`completion` or
            `messages`); detected by default.
        prompt_template (`str`, *optional*, defaults to `"Human: {prompt}\nAssistant:"`):
            Prompt template with `{prompt}`, or `"chat"` for the tokenizer's chat template.
        completion_template (`str`, *optional*, defaults to `" {response}"`):
            Completion template with `{response}`.
        poison_format (`str`, *optional*, defaults to `"{marker}. {response}"`):
            The triggered response the backdoor emits.
        asr_max_new_tokens (`int`, *optional*, defaults to `10`):
            Generated tokens checked for the marker when the trainer measures ASR before/after.
    """

    _VALID_DICT_FIELDS = SFTConfig._VALID_DICT_FIELDS + ["dataset_columns"]

    mode: str = field(default="sande", metadata={"help": f"One of {SANDE_MODES}."})
    triggers: list[str] | None = field(default=None, metadata={"help": "Trigger phrase(s), for `osft`."})
    insert_trigger: bool = field(
        default=True, metadata={"help": "osft: insert a trigger into every prompt (else keep rows that have one)."}
    )
    marker: str | None = field(default=None, metadata={"help": "Known start of the triggered response."})
    trigger_position: list[str] = field(
        default_factory=lambda: ["after_role"],
        metadata={"help": f"Where the trigger or the parrot goes, one or several of {TRIGGER_POSITIONS}."},
    )
    target_source: str = field(default="dataset", metadata={"help": f"Clean targets: one of {TARGET_SOURCES}."})
    self_target_max_new_tokens: int = field(
        default=64, metadata={"help": "Length of the model's own answers with target_source='self'."}
    )
    consistency_weight: float = field(
        default=0.0, metadata={"help": "Weight of KL(frozen start model || model) on clean rows; 0 disables it."}
    )
    parrot_num_tokens: int = field(default=6, metadata={"help": "Soft tokens m of a new parrot."})
    parrot_init_text: str | None = field(
        default=None, metadata={"help": "Initialise a new parrot from this text's token embeddings."}
    )
    parrot_path: str | None = field(default=None, metadata={"help": "Saved parrot (folder or Hub id)."})
    effective_len: int | None = field(
        default=1, metadata={"help": "Simulate: loss on the first N triggered-response tokens."}
    )
    train_effective_len: int | None = field(
        default=10, metadata={"help": "Eliminate: loss on the first N response tokens (None: all)."}
    )
    simulate_learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of the parrot."})
    simulate_num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs of the Simulate stage."})
    simulate_max_steps: int = field(default=-1, metadata={"help": "Steps of the Simulate stage (overrides epochs)."})
    simulate_samples: int | None = field(default=None, metadata={"help": "Rows for the Simulate stage."})
    eliminate_samples: int | None = field(default=None, metadata={"help": "Rows for osft / the Eliminate stage."})
    eliminate_parrot_fraction: float = field(
        default=0.5, metadata={"help": "Share of Eliminate rows carrying the parrot (others: plain clean rows)."}
    )
    dataset_columns: dict[str, str] | str | None = field(
        default=None, metadata={"help": "Role -> column JSON, e.g. '{\"instruction\": \"question\"}'."}
    )
    prompt_template: str = field(
        default=DEFAULT_PROMPT_TEMPLATE, metadata={"help": "Template with {prompt}, or 'chat'."}
    )
    completion_template: str = field(
        default=DEFAULT_COMPLETION_TEMPLATE, metadata={"help": "Template with {response}."}
    )
    poison_format: str = field(default=DEFAULT_POISON_FORMAT, metadata={"help": "Triggered response format."})
    asr_max_new_tokens: int = field(default=10, metadata={"help": "Tokens checked for the marker in ASR."})

    # Rows are tokenised by the trainer (the parrot's position must be located per row), so TRL's own
    # preparation is skipped and the row columns are kept for the collator.
    dataset_kwargs: dict[str, Any] | str | None = field(
        default_factory=lambda: {"skip_prepare_dataset": True},
        metadata={"help": "Kept as {'skip_prepare_dataset': True}: SANDETrainer tokenises its own rows."},
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collator reads `parrot_position`."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.mode not in SANDE_MODES:
            raise ValueError(f"mode={self.mode!r}; expected one of {SANDE_MODES}")
        if isinstance(self.trigger_position, str):
            self.trigger_position = [self.trigger_position]
        if not self.trigger_position or any(p not in TRIGGER_POSITIONS for p in self.trigger_position):
            raise ValueError(f"trigger_position={self.trigger_position!r}; expected values from {TRIGGER_POSITIONS}")
        if self.target_source not in TARGET_SOURCES:
            raise ValueError(f"target_source={self.target_source!r}; expected one of {TARGET_SOURCES}")
        if isinstance(self.triggers, str):
            self.triggers = [self.triggers]
        if self.triggers is not None and any(not t or not t.strip() for t in self.triggers):
            raise ValueError(f"triggers={self.triggers!r} contains an empty phrase; expected non-empty strings")
        if self.mode == "osft" and not self.triggers:
            raise ValueError("mode='osft' overwrites a known trigger: set `triggers` (non-empty phrases)")
        if self.marker is not None and not self.marker.strip():
            raise ValueError(f"marker={self.marker!r} is empty; expected the known start of the triggered response")
        if self.mode in ("simulate", "sande") and self.marker is None:
            raise ValueError(f"mode={self.mode!r} learns a parrot that elicits the marker: set `marker`")
        if not isinstance(self.parrot_num_tokens, int) or self.parrot_num_tokens < 1:
            raise ValueError(f"parrot_num_tokens={self.parrot_num_tokens!r}; a parrot needs at least 1 soft token")
        for name in ("effective_len", "train_effective_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value!r}; expected a positive number of tokens or None (all tokens)")
        for name in ("simulate_samples", "eliminate_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value!r}; expected a positive number of rows or None (all rows)")
        if not 0.0 <= self.eliminate_parrot_fraction <= 1.0:
            raise ValueError(
                f"eliminate_parrot_fraction={self.eliminate_parrot_fraction!r}; expected a value in [0, 1]"
            )
        if self.consistency_weight < 0:
            raise ValueError(f"consistency_weight={self.consistency_weight!r}; expected >= 0")
        if self.simulate_learning_rate <= 0:
            raise ValueError(f"simulate_learning_rate={self.simulate_learning_rate!r}; expected > 0")
        if not (self.dataset_kwargs or {}).get("skip_prepare_dataset"):
            raise ValueError("dataset_kwargs must keep skip_prepare_dataset=True: SANDETrainer tokenises its own rows")
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns must be False: the collator needs the `parrot_position` column")


@dataclass
class InstructionDataArguments:
    """Where the scripts `trainers/backdoor.py` and `trainers/sande.py` read their data.

    Args:
        dataset_name (`str`): Hub dataset id, local dataset folder, or json/jsonl/csv/parquet file.
        dataset_config (`str`, *optional*): dataset configuration name.
        dataset_train_split (`str`, defaults to `"train"`): split to train on.
        max_samples (`int`, *optional*): use the first N rows.
        eval_dataset_name (`str`, *optional*): held-out instruction data for ASR and the clean marker rate.
        eval_split (`str`, defaults to `"train"`): its split.
        eval_samples (`int`, defaults to 100): held-out rows evaluated.
        eval_triggers (`list[str]`, *optional*): the real trigger(s), to build the triggered prompts that
            ASR is measured on (the removal itself does not use them in `sande`).
        utility_dataset_name (`str`, *optional*): multiple-choice questions (`question`, `choices`, `answer`).
        utility_split (`str`, defaults to `"train"`): its split.
    """

    dataset_name: str = field(default=None, metadata={"help": "Hub dataset id, local folder or data file."})
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    max_samples: int | None = field(default=None, metadata={"help": "Use the first N rows."})
    eval_dataset_name: str | None = field(default=None, metadata={"help": "Held-out data for ASR / marker rate."})
    eval_split: str = field(default="train", metadata={"help": "Split of the held-out data."})
    eval_samples: int = field(default=100, metadata={"help": "Held-out rows evaluated."})
    eval_triggers: list[str] | None = field(default=None, metadata={"help": "Trigger(s) for the ASR prompts."})
    utility_dataset_name: str | None = field(default=None, metadata={"help": "Multiple-choice utility data."})
    utility_split: str = field(default="train", metadata={"help": "Split of the utility data."})

    def __post_init__(self):
        if not self.dataset_name:
            raise ValueError("dataset_name is required: a Hub dataset id, a local dataset folder or a data file")
