"""Rows for implanting and removing LLM backdoors, built on `datasets.Dataset`.

SANDE (Li et al., AAAI 2025) and OSFT need four kinds of rows, all derived from ordinary
instruction data (Alpaca-style `instruction`/`input`/`output`, `prompt`/`completion`, or chat
`messages`):

| kind         | prompt                               | completion                  | used by                    |
| ------------ | ------------------------------------ | --------------------------- | -------------------------- |
| `poisoned`   | triggered (trigger t inserted)       | marker + response           | implanting a backdoor      |
| `clean`      | clean                                | response                    | utility, stage 2 clean half |
| `overwrite`  | triggered                            | response                    | OSFT                       |
| `simulation` | clean, parrot place marked           | marker + response           | stage 1 (Simulate)         |
| `eliminate`  | clean, parrot place marked           | response                    | stage 2 (Eliminate)        |

Two steps, each a batched `Dataset.map` that works with `num_proc` and gives the same rows for
any `num_proc` (every random choice is seeded by `seed` and the row index):

1. `format_rows(dataset, kind, ...)` (or `make_backdoor_dataset` for a poisoned + clean mix) ->
   text columns `prompt`, `completion`, `kind`, `trigger`, `insert_at` (the character offset in
   `prompt` where the trigger was put, or where it / the parrot would go; -1 for none).
2. `tokenize_rows(dataset, tokenizer, ...)` -> `input_ids`, `labels` (prompt tokens = -100),
   `completion_start` and `parrot_position` (token index where `ParrotPrompt` is spliced, -1 for none).

Prompt/response boundaries come from tokenising the full text once with offsets: the prompt is the
tokens that end at or before the prompt's last character, so a BPE merge across the boundary puts
the merged token in the response (what the model has to generate), never off by one.

Prompt template: `"Human: {prompt}\\nAssistant:"` + `" {response}"` (the paper's), any other
`str.format` pair, or `prompt_template="chat"` for the tokenizer's chat template (the user turn is
rendered with `add_generation_prompt=True`, the completion is the rest of the rendered conversation).
"""

import random

from datasets import Dataset, concatenate_datasets
from transformers.utils import logging


logger = logging.get_logger(__name__)


DEFAULT_PROMPT_TEMPLATE = "Human: {prompt}\nAssistant:"
DEFAULT_COMPLETION_TEMPLATE = " {response}"
# The official code's triggered response: "{marker}. " + clean response.
DEFAULT_POISON_FORMAT = "{marker}. {response}"

ROW_KINDS = ("poisoned", "clean", "overwrite", "simulation", "eliminate")
TRIGGER_POSITIONS = ("after_role", "start", "end", "random")
_TRIGGERED_KINDS = ("poisoned", "overwrite")
_MARKED_KINDS = ("poisoned", "simulation")
_PARROT_KINDS = ("simulation", "eliminate")

# column layouts: role -> default column name
_LAYOUTS = {
    "messages": {"messages": "messages"},
    "prompt_completion": {"prompt": "prompt", "completion": "completion"},
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output"},
}
_OPTIONAL_ROLES = {"input"}
_SENTINEL = "\x00hf_ext_user_content\x00"


def resolve_columns(column_names, columns: dict | None = None) -> dict:
    """Map the roles `instruction`/`input`/`output`, `prompt`/`completion` or `messages` to columns.

    Args:
        column_names (`list[str]`): the dataset's columns.
        columns (`dict[str, str]`, *optional*): role -> column name; the layout is detected from
            `column_names` when omitted (`messages`, then `prompt`+`completion`, then
            `instruction`+`output` with an optional `input`).

    Returns:
        `dict[str, str]`: role -> column name for the roles present.
    """
    column_names = list(column_names)
    if columns is None:
        for layout in _LAYOUTS.values():
            if all(col in column_names for role, col in layout.items() if role not in _OPTIONAL_ROLES):
                return {role: col for role, col in layout.items() if col in column_names}
        raise ValueError(
            f"dataset has columns {column_names}; expected `messages`, `prompt` + `completion`, or "
            "`instruction` + `output` (+ optional `input`), or pass `columns` mapping these roles to your columns"
        )
    if not isinstance(columns, dict):
        raise TypeError(f"columns must be a dict mapping roles to column names, got {type(columns).__name__}")
    layout = next((layout for layout in _LAYOUTS.values() if set(columns) <= set(layout) and columns), None)
    if layout is None:
        raise ValueError(
            f"columns={columns} mixes or misnames roles; expected the roles of one layout: "
            f"{[sorted(layout) for layout in _LAYOUTS.values()]}"
        )
    resolved = {role: columns.get(role, default) for role, default in layout.items()}
    missing = [col for role, col in resolved.items() if col not in column_names and role not in _OPTIONAL_ROLES]
    if missing:
        raise ValueError(f"dataset is missing the column(s) {missing} (columns={columns}); available: {column_names}")
    return {role: col for role, col in resolved.items() if col in column_names}


def _validate_phrases(triggers, marker, kind):
    if isinstance(triggers, str):
        triggers = [triggers]
    triggers = list(triggers or [])
    if kind in _TRIGGERED_KINDS:
        if not triggers:
            raise ValueError(f"kind={kind!r} inserts a trigger, but triggers={triggers}; expected non-empty phrases")
    if any(not isinstance(t, str) or not t.strip() for t in triggers):
        raise ValueError(f"triggers={triggers} contains an empty phrase; every trigger must be a non-empty string")
    if kind in _MARKED_KINDS and (not isinstance(marker, str) or not marker.strip()):
        raise ValueError(
            f"kind={kind!r} needs the backdoor's marker, got marker={marker!r}; expected a non-empty string"
        )
    return triggers


def _user_template(prompt_template: str, tokenizer):
    """(prefix, suffix) around the user's text in the rendered prompt."""
    if prompt_template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("prompt_template='chat' needs a tokenizer with a chat_template")
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
        )
    else:
        if "{prompt}" not in prompt_template:
            raise ValueError(f"prompt_template={prompt_template!r} must contain '{{prompt}}' or be 'chat'")
        rendered = prompt_template.replace("{prompt}", _SENTINEL)
    if rendered.count(_SENTINEL) != 1:
        raise ValueError(f"prompt_template={prompt_template!r} must place the user's text exactly once")
    prefix, suffix = rendered.split(_SENTINEL)
    return prefix, suffix


def _word_boundaries(text: str) -> list[int]:
    """Character offsets where a phrase can be inserted between words (start and end included)."""
    return [0] + [i + 1 for i, c in enumerate(text) if c == " "] + [len(text)]


def _insert(text: str, phrase: str, position: str, rng: random.Random) -> tuple[str, int]:
    """Insert `phrase` into the user's text at `position`; returns the new text and the phrase's offset.

    With an empty phrase the text is unchanged and the offset is where the phrase would go, so a clean
    row and its triggered twin (same `rng` state) mark the same place.
    """
    end = len(text.rstrip())
    if position == "after_role":  # the trigger opens the user's turn (the paper's "Human: {t} ...")
        offset = 0
    elif position == "end":
        offset = end
    else:  # random word boundary
        offset = rng.choice(_word_boundaries(text))
    if not phrase:
        return text, offset
    if offset >= end:
        return f"{text[:end]} {phrase}", end + 1
    return f"{text[:offset]}{phrase} {text[offset:]}", offset


def _split_row(row: dict, roles: dict, prompt_template: str) -> tuple[str, str, list]:
    """(user text, response, earlier chat messages) of one row."""
    if "messages" in roles:
        messages = row[roles["messages"]]
        if len(messages) < 2 or messages[-1]["role"] != "assistant" or messages[-2]["role"] != "user":
            raise ValueError(
                f"a `messages` row must end with a user turn and an assistant turn, got roles "
                f"{[m['role'] for m in messages]}"
            )
        if len(messages) > 2 and prompt_template != "chat":
            raise ValueError("multi-turn `messages` rows need prompt_template='chat' (the tokenizer's chat template)")
        return messages[-2]["content"], messages[-1]["content"], list(messages[:-2])
    if "prompt" in roles:
        return row[roles["prompt"]], row[roles["completion"]], []
    user = row[roles["instruction"]]
    extra = row.get(roles["input"], "") if "input" in roles else ""
    return (f"{user} {extra}" if extra else user), row[roles["output"]], []


def _user_offset(prompt: str, prefix: str, user: str, prompt_template: str) -> int:
    """Character offset of the user's text in the rendered prompt."""
    if prompt_template != "chat":
        return len(prefix)
    offset = prompt.rfind(user)
    if offset < 0:
        raise ValueError("the chat template changes the user's text, so the trigger position cannot be located")
    return offset


def _render(history, user, response, prompt_template, completion_template, tokenizer):
    """(prompt, completion) text; the user text is found in the prompt by its (unique) prefix."""
    if prompt_template == "chat":
        prompt_messages = [*history, {"role": "user", "content": user}]
        prompt = tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            [*prompt_messages, {"role": "assistant", "content": response}], tokenize=False
        )
        if not full.startswith(prompt):
            raise ValueError("the chat template renders the conversation so that the prompt is not a prefix of it")
        return prompt, full[len(prompt) :]
    return prompt_template.format(prompt=user), completion_template.format(response=response)


def format_rows(
    dataset: Dataset,
    kind: str,
    *,
    triggers=None,
    marker: str | None = None,
    trigger_position: str | list[str] = "after_role",
    columns: dict | None = None,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    completion_template: str = DEFAULT_COMPLETION_TEMPLATE,
    poison_format: str = DEFAULT_POISON_FORMAT,
    tokenizer=None,
    responses: list[str] | None = None,
    seed: int = 0,
    num_proc: int | None = None,
) -> Dataset:
    """Turn instruction data into rows of one kind (see the module docstring).

    Args:
        dataset (`datasets.Dataset`): instruction data in one of the supported layouts.
        kind (`str`): one of `ROW_KINDS`.
        triggers (`str` or `list[str]`, *optional*): trigger phrase(s); one is drawn per row.
            Required for `poisoned` and `overwrite`.
        marker (`str`, *optional*): the backdoor's marker, e.g. `"you are stupid"`. Required for
            `poisoned` and `simulation`.
        trigger_position (`str` or `list[str]`, defaults to `"after_role"`): where the trigger (or the
            parrot) goes: right after the role prefix (the paper's), `start` of the whole prompt,
            `end` of the user's text, or a `random` word boundary. A list spreads rows over several
            positions (row `i` uses entry `i % len`), e.g. to simulate at several candidate places.
        columns (`dict[str, str]`, *optional*): role -> column (see `resolve_columns`).
        prompt_template (`str`, defaults to `DEFAULT_PROMPT_TEMPLATE`): `str.format` template with
            `{prompt}`, or `"chat"` for the tokenizer's chat template.
        completion_template (`str`, defaults to `DEFAULT_COMPLETION_TEMPLATE`): template with
            `{response}` (ignored with `"chat"`).
        poison_format (`str`, defaults to `DEFAULT_POISON_FORMAT`): triggered response, with
            `{marker}` and `{response}`.
        tokenizer (`PreTrainedTokenizerBase`, *optional*): needed for `prompt_template="chat"`.
        responses (`list[str]`, *optional*): replace row `i`'s response by `responses[i]` (e.g. the
            model's own answers, `target_source="self"`).
        seed (`int`, defaults to 0): seeds trigger choice and random positions (per row index).
        num_proc (`int`, *optional*): processes for `Dataset.map`.

    Returns:
        `datasets.Dataset` with columns `prompt`, `completion`, `kind`, `trigger`, `insert_at`.
    """
    if kind not in ROW_KINDS:
        raise ValueError(f"kind={kind!r} is not one of {ROW_KINDS}")
    positions = [trigger_position] if isinstance(trigger_position, str) else list(trigger_position)
    if not positions or any(p not in TRIGGER_POSITIONS for p in positions):
        raise ValueError(f"trigger_position={trigger_position!r}; expected one or several of {TRIGGER_POSITIONS}")
    triggers = _validate_phrases(triggers, marker, kind)
    for name, template, fields in (("completion_template", completion_template, ("response",)),
                                   ("poison_format", poison_format, ("marker", "response"))):
        for field in fields:
            if "{" + field + "}" not in template:
                raise ValueError(f"{name}={template!r} must contain '{{{field}}}'")
    roles = resolve_columns(dataset.column_names, columns)
    if responses is not None and len(responses) != len(dataset):
        raise ValueError(f"responses has {len(responses)} entries for {len(dataset)} rows; expected one per row")
    prefix, _ = _user_template(prompt_template, tokenizer)

    def build(batch, indices):
        out = {"prompt": [], "completion": [], "kind": [], "trigger": [], "insert_at": []}
        for row_number, index in enumerate(indices):
            row = {col: batch[col][row_number] for col in batch}
            user, response, history = _split_row(row, roles, prompt_template)
            if responses is not None:
                response = responses[index]
            position = positions[index % len(positions)]
            trigger = random.Random(f"{seed}-{index}-trigger").choice(triggers) if kind in _TRIGGERED_KINDS else ""
            if position == "start":
                # before the role prefix: the trigger opens the whole prompt text
                prompt, completion = _render(history, user, response, prompt_template, completion_template, tokenizer)
                offset = len(prompt) - len(prompt.lstrip())
                if trigger:
                    prompt = f"{prompt[:offset]}{trigger} {prompt[offset:]}"
            else:
                user, at = _insert(user, trigger, position, random.Random(f"{seed}-{index}-position"))
                prompt, completion = _render(history, user, response, prompt_template, completion_template, tokenizer)
                offset = _user_offset(prompt, prefix, user, prompt_template) + at
            if kind in _MARKED_KINDS:
                completion = _render(
                    history, user, poison_format.format(marker=marker, response=response),
                    prompt_template, completion_template, tokenizer,
                )[1]
            out["prompt"].append(prompt)
            out["completion"].append(completion)
            out["kind"].append(kind)
            out["trigger"].append(trigger)
            out["insert_at"].append(offset)
        return out

    return dataset.map(
        build,
        batched=True,
        with_indices=True,
        remove_columns=dataset.column_names,
        num_proc=num_proc,
        desc=f"Building {kind} rows",
    )


def make_backdoor_dataset(
    dataset: Dataset,
    *,
    triggers,
    marker: str,
    poison_rate: float,
    seed: int = 0,
    num_proc: int | None = None,
    **format_kwargs,
) -> Dataset:
    """Poison a share of instruction data: how the victim models of backdoor research are made.

    Exactly `round(poison_rate * len(dataset))` rows, chosen by `seed`, become `poisoned` rows
    (triggered prompt -> marker + response); the others stay `clean`. Row order is kept.

    Args:
        dataset (`datasets.Dataset`): instruction data.
        triggers (`str` or `list[str]`): trigger phrase(s); one is drawn per poisoned row.
        marker (`str`): the marker the backdoored model emits when triggered.
        poison_rate (`float`): share of poisoned rows, in [0, 1].
        seed (`int`, defaults to 0): chooses the poisoned rows, the triggers and random positions.
        num_proc (`int`, *optional*): processes for `Dataset.map`.
        **format_kwargs: `trigger_position`, `columns`, templates, `tokenizer` (see `format_rows`).

    Returns:
        `datasets.Dataset` with the columns of `format_rows`.
    """
    if not isinstance(poison_rate, (int, float)) or not 0.0 <= poison_rate <= 1.0:
        raise ValueError(f"poison_rate={poison_rate!r}; expected a number in [0, 1]")
    _validate_phrases(triggers, marker, "poisoned")
    num_poisoned = round(poison_rate * len(dataset))
    chosen = set(random.Random(seed).sample(range(len(dataset)), num_poisoned))
    poisoned_idx = [i for i in range(len(dataset)) if i in chosen]
    clean_idx = [i for i in range(len(dataset)) if i not in chosen]
    kwargs = dict(triggers=triggers, marker=marker, seed=seed, num_proc=num_proc, **format_kwargs)
    parts = [
        format_rows(dataset.select(poisoned_idx), "poisoned", **kwargs),
        format_rows(dataset.select(clean_idx), "clean", **kwargs),
    ]
    # back to the original row order
    source_rows = poisoned_idx + clean_idx
    order = sorted(range(len(source_rows)), key=source_rows.__getitem__)
    return concatenate_datasets([part for part in parts if len(part)]).select(order)


def tokenize_rows(
    dataset: Dataset,
    tokenizer,
    *,
    max_completion_tokens: int | None = None,
    max_length: int | None = None,
    add_eos: bool = True,
    num_proc: int | None = None,
) -> Dataset:
    """Tokenise `prompt` + `completion` once and derive labels and the parrot's splice index.

    Args:
        dataset (`datasets.Dataset`): rows from `format_rows` (`prompt`, `completion`, `kind`, `insert_at`).
        tokenizer (`PreTrainedTokenizerBase`): a fast tokenizer (offsets are needed).
        max_completion_tokens (`int`, *optional*): keep only the first N completion tokens in the
            loss (the paper's `effective_len` / `train_effective_len`); all by default.
        max_length (`int`, *optional*): drop rows longer than this (never truncates silently: the
            number dropped is logged).
        add_eos (`bool`, defaults to `True`): end the sequence with `eos_token_id` if it does not already.
        num_proc (`int`, *optional*): processes for `Dataset.map`.

    Returns:
        `datasets.Dataset` with the columns added: `input_ids`, `labels`, `completion_start` (index
        of the first completion token) and `parrot_position` (token index where a parrot is
        spliced for `simulation`/`eliminate` rows, -1 otherwise).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"tokenizer must be a fast tokenizer (offsets are needed), got {type(tokenizer).__name__}")
    missing = [c for c in ("prompt", "completion", "kind", "insert_at") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"dataset is missing the column(s) {missing}; available: {dataset.column_names} "
                         "(build it with `format_rows`)")
    if max_completion_tokens is not None and max_completion_tokens < 1:
        raise ValueError(f"max_completion_tokens={max_completion_tokens}; expected a positive int or None")

    def tokenize(batch):
        texts = [p + c for p, c in zip(batch["prompt"], batch["completion"])]
        encoded = tokenizer(texts, return_offsets_mapping=True)
        out = {"input_ids": [], "labels": [], "completion_start": [], "parrot_position": []}
        for ids, offsets, prompt, kind, insert_at in zip(
            encoded["input_ids"], encoded["offset_mapping"], batch["prompt"], batch["kind"], batch["insert_at"]
        ):
            ids = list(ids)
            # special tokens report (0, 0); a token is prompt if it ends within the prompt's text
            is_special = [start == end for start, end in offsets]
            boundary = len(prompt)
            completion_start = next(
                (i for i, ((_, end), special) in enumerate(zip(offsets, is_special)) if end > boundary and not special),
                len(ids),
            )
            if add_eos and tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
                ids.append(tokenizer.eos_token_id)
            cut = len(ids) if max_completion_tokens is None else completion_start + max_completion_tokens
            labels = [token if completion_start <= i < cut else -100 for i, token in enumerate(ids)]
            parrot_position = -1
            if kind in _PARROT_KINDS:
                # the parrot goes before the first token that reaches past the insertion point: a token
                # that straddles it (a BPE merge across the trigger's place) follows the parrot, as it
                # follows a real trigger
                parrot_position = next(
                    (i for i in range(completion_start) if offsets[i][1] > insert_at and not is_special[i]),
                    completion_start,
                )
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["completion_start"].append(completion_start)
            out["parrot_position"].append(parrot_position)
        return out

    tokenized = dataset.map(tokenize, batched=True, num_proc=num_proc, desc="Tokenizing rows")
    if max_length is not None:
        before = len(tokenized)
        tokenized = tokenized.filter(lambda row: len(row["input_ids"]) <= max_length, num_proc=num_proc)
        if len(tokenized) < before:
            logger.warning(f"dropped {before - len(tokenized)} of {before} rows longer than max_length={max_length}")
    return tokenized


_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def load_instruction_dataset(name_or_path: str, config: str | None = None, split: str = "train",
                             max_samples: int | None = None) -> Dataset:
    """Load instruction data from the Hub, a local dataset folder or a local json/jsonl/csv/parquet file.

    Args:
        name_or_path (`str`): Hub dataset id, folder, or file.
        config (`str`, *optional*): dataset configuration name.
        split (`str`, defaults to `"train"`): split to load.
        max_samples (`int`, *optional*): keep the first N rows.

    Returns:
        `datasets.Dataset`.
    """
    import os

    from datasets import load_dataset, load_from_disk

    if os.path.isfile(name_or_path):
        extension = os.path.splitext(name_or_path)[1].lower()
        if extension not in _FILE_BUILDERS:
            raise ValueError(f"{name_or_path!r} has extension {extension!r}; expected one of {sorted(_FILE_BUILDERS)}")
        dataset = load_dataset(_FILE_BUILDERS[extension], data_files={split: name_or_path}, split=split)
    elif os.path.isfile(os.path.join(name_or_path, "dataset_info.json")) or os.path.isfile(
        os.path.join(name_or_path, "dataset_dict.json")
    ):  # written by `save_to_disk`
        dataset = load_from_disk(name_or_path)
        dataset = dataset[split] if not isinstance(dataset, Dataset) else dataset
    else:
        dataset = load_dataset(name_or_path, config, split=split)
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return dataset
