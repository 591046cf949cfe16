"""A built-in instruction task whose answers can be checked exactly.

Backdoor removal has to be shown to keep the model useful, and usefulness is only
measurable exactly when every answer can be checked. No model can be downloaded in
the test environments, so a small Llama is trained from scratch on this task in
minutes: the victim of the SANDE reproduction (`benchmarks/sande_reproduction.py`)
and of the demo.

Rows are `{"instruction", "input", "output", "task"}` (the Alpaca columns plus the
task kind), the layout the SANDE data builders read. Five task kinds:

| kind | instruction | input | output |
| --- | --- | --- | --- |
| `add` | Add the two numbers. | `4 + 7` | `11` |
| `reverse` | Reverse the letters. | `cat` | `t a c` |
| `sort_digits` | Sort the digits from smallest to largest. | `5 2 9` | `2 5 9` |
| `capital` | What is the capital of this country? | `France` | `Paris` |
| `count_letters` | How many letters are in this word? | `house` | `5` |

An answer is correct when its first line, stripped of surrounding spaces and a final
period, equals the expected output (case-insensitive). A response that prefixes the
answer with anything (a backdoor marker, for instance) is therefore not correct.
"""

import random
from collections.abc import Iterable, Sequence

from datasets import Dataset, DatasetDict
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase, set_seed
from ..testing import train_tiny_tokenizer
from .data import format_rows, tokenize_rows


# the layout of the rows, for `hf_ext.sande.data`
_COLUMNS = {"instruction": "instruction", "input": "input", "output": "output"}

TASK_KINDS = ("add", "reverse", "sort_digits", "capital", "count_letters")

_INSTRUCTIONS = {
    "add": "Add the two numbers.",
    "reverse": "Reverse the letters.",
    "sort_digits": "Sort the digits from smallest to largest.",
    "capital": "What is the capital of this country?",
    "count_letters": "How many letters are in this word?",
}

CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Japan": "Tokyo",
    "Egypt": "Cairo",
    "Peru": "Lima",
    "Kenya": "Nairobi",
    "Norway": "Oslo",
    "Canada": "Ottawa",
}

_WORDS = (
    "cat", "dog", "sun", "tree", "fish", "bird", "house", "apple", "river", "cloud",
    "green", "table", "garden", "orange", "yellow", "window", "planet", "bottle",
    "morning", "kitchen", "blanket", "mountain", "elephant", "computer",
)  # fmt: skip

# The only kind whose input space (1,000 digit triples) is large enough for held-out rows to
# avoid every training input; the others (100 sums, 10 countries, 24 words) are necessarily
# seen in training.
_OPEN_KINDS = ("sort_digits",)


def _sample_row(kind: str, rng: random.Random) -> dict:
    if kind == "add":
        a, b = rng.randrange(10), rng.randrange(10)
        task_input, output = f"{a} + {b}", str(a + b)
    elif kind == "reverse":
        task_input = rng.choice(_WORDS)
        output = " ".join(reversed(task_input))
    elif kind == "sort_digits":
        digits = [rng.randrange(10) for _ in range(3)]
        task_input, output = " ".join(map(str, digits)), " ".join(map(str, sorted(digits)))
    elif kind == "capital":
        task_input = rng.choice(sorted(CAPITALS))
        output = CAPITALS[task_input]
    elif kind == "count_letters":
        task_input = rng.choice(_WORDS)
        output = str(len(task_input))
    return {"instruction": _INSTRUCTIONS[kind], "input": task_input, "output": output, "task": kind}


def _check_kinds(task_kinds: Sequence[str]) -> tuple[str, ...]:
    task_kinds = tuple(task_kinds)
    unknown = [kind for kind in task_kinds if kind not in TASK_KINDS]
    if not task_kinds or unknown:
        raise ValueError(f"task_kinds={task_kinds!r} must be a non-empty subset of {TASK_KINDS}")
    return task_kinds


def make_instruction_dataset(
    num_rows: int, seed: int = 0, task_kinds: Sequence[str] = TASK_KINDS, exclude_inputs: Iterable = ()
) -> Dataset:
    """Rows of the checkable instruction task, identical for identical arguments.

    Task kinds take turns (row `i` is of kind `task_kinds[i % len(task_kinds)]`), so every
    kind gets the same share; inputs are drawn from `random.Random(seed)`.

    Args:
        num_rows (`int`): number of rows, at least 1.
        seed (`int`, defaults to 0): seed of the input draws.
        task_kinds (`Sequence[str]`, defaults to `TASK_KINDS`): the kinds to mix.
        exclude_inputs (`Iterable[tuple[str, str]]`, *optional*): `(task, input)` pairs not to
            produce, for the kind with a large input space (`sort_digits`); used to build
            held-out rows.

    Returns:
        `datasets.Dataset` with string columns `instruction`, `input`, `output`, `task`.
    """
    if not isinstance(num_rows, int) or num_rows < 1:
        raise ValueError(f"num_rows={num_rows!r} must be a positive integer")
    task_kinds = _check_kinds(task_kinds)
    excluded = set(exclude_inputs)
    rng = random.Random(seed)
    rows, draws = [], 0
    while len(rows) < num_rows:
        kind = task_kinds[len(rows) % len(task_kinds)]
        row = _sample_row(kind, rng)
        draws += 1
        if kind in _OPEN_KINDS and (kind, row["input"]) in excluded:
            if draws > 1000 * num_rows:
                raise ValueError(
                    f"exclude_inputs leaves (almost) no {kind!r} input to draw; use fewer training rows or other task_kinds"
                )
            continue
        rows.append(row)
    return Dataset.from_list(rows)


def make_instruction_splits(
    num_train: int = 4000, num_test: int = 300, seed: int = 0, task_kinds: Sequence[str] = TASK_KINDS
) -> DatasetDict:
    """Training rows and held-out rows of the checkable instruction task.

    Held-out rows are drawn from another seed; for `sort_digits` they never repeat a training
    input, so accuracy there measures the learned rule, not recall.

    Args:
        num_train (`int`, defaults to 4000): rows in the `"train"` split.
        num_test (`int`, defaults to 300): rows in the `"test"` split.
        seed (`int`, defaults to 0): seed of both splits.
        task_kinds (`Sequence[str]`, defaults to `TASK_KINDS`): the kinds to mix.

    Returns:
        `datasets.DatasetDict` with splits `"train"` and `"test"`.
    """
    train = make_instruction_dataset(num_train, seed=seed, task_kinds=task_kinds)
    seen = set(zip(train["task"], train["input"]))
    test = make_instruction_dataset(num_test, seed=seed + 1_000_003, task_kinds=task_kinds, exclude_inputs=seen)
    return DatasetDict(train=train, test=test)


def extract_answer(response: str) -> str:
    """The answer in a generated response: its first line, stripped, without a final period."""
    answer = response.strip().split("\n", 1)[0].strip()
    return answer[:-1].rstrip() if answer.endswith(".") else answer


def check_answer(response: str, expected: str) -> bool:
    """Whether a generated `response` answers with `expected` (see `extract_answer`; case-insensitive)."""
    if not isinstance(response, str) or not isinstance(expected, str):
        raise TypeError(f"response and expected must be str, got {type(response).__name__} and {type(expected).__name__}")
    return extract_answer(response).lower() == extract_answer(expected).lower()


def answer_accuracy(responses: Sequence[str], expected: Sequence[str]) -> float:
    """Share of `responses` that `check_answer` accepts against `expected`, in [0, 1].

    Args:
        responses (`Sequence[str]`): generated responses (the new text only, not the prompt).
        expected (`Sequence[str]`): the reference outputs, same length.
    """
    if len(responses) != len(expected) or not responses:
        raise ValueError(
            f"responses and expected must be non-empty and of equal length, got {len(responses)} and {len(expected)}"
        )
    return sum(check_answer(r, e) for r, e in zip(responses, expected)) / len(responses)


def build_instruction_tokenizer(
    dataset: Dataset, extra_texts: Iterable[str] = (), vocab_size: int = 600
) -> PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer trained on the task's rows (digits split, specials as in `hf_ext.testing`).

    Args:
        dataset (`datasets.Dataset`): rows with `instruction`, `input` and `output` columns.
        extra_texts (`Iterable[str]`, *optional*): more text the tokenizer should cover well,
            e.g. the prompt template, trigger phrases and the backdoor marker.
        vocab_size (`int`, defaults to 600): target vocabulary size, specials included.
    """
    missing = {"instruction", "input", "output"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"dataset lacks columns {sorted(missing)}; it has {dataset.column_names}")
    texts = [f"{i} {x}\n{o}" for i, x, o in zip(dataset["instruction"], dataset["input"], dataset["output"])]
    return train_tiny_tokenizer([*texts, *extra_texts], vocab_size=vocab_size, split_digits=True)


def tiny_llama_for(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 128,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    intermediate_size: int = 256,
    seed: int = 0,
) -> PreTrainedModel:
    """A randomly initialised Llama sized for the instruction task (about 0.9M parameters by default).

    Args:
        tokenizer (`PreTrainedTokenizerBase`): fixes the vocabulary size and the special token ids.
        hidden_size (`int`, defaults to 128), num_hidden_layers (`int`, defaults to 4),
        num_attention_heads (`int`, defaults to 4), intermediate_size (`int`, defaults to 256):
            the model's shape.
        seed (`int`, defaults to 0): seed of the initial weights.
    """
    set_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def pretrain_instruction_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    output_dir: str,
    max_steps: int = 1000,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    seed: int = 0,
) -> PreTrainedModel:
    """Supervised training of `model` on instruction rows (loss on the response tokens only).

    A plain TRL `SFTTrainer` run on the SANDE data builders' clean rows (`"Human: {instruction} {input}\\nAssistant:"`
    -> `" {output}</s>"`, see `hf_ext.sande.data`), with a cosine schedule and 3% warmup, no checkpoints.
    Trains `model` in place.

    Args:
        model (`PreTrainedModel`): the causal LM to train, e.g. from `tiny_llama_for`.
        tokenizer (`PreTrainedTokenizerBase`): its tokenizer, with a pad token.
        dataset (`datasets.Dataset`): rows with `instruction`, `input` and `output` columns.
        output_dir (`str`): the trainer's output folder (logs only).
        max_steps (`int`, defaults to 1000), batch_size (`int`, defaults to 64),
        learning_rate (`float`, defaults to 3e-3), seed (`int`, defaults to 0): the run's settings.

    Returns:
        `PreTrainedModel`: `model`, trained, in eval mode.
    """
    from trl import SFTConfig, SFTTrainer

    missing = {"instruction", "input", "output"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"dataset lacks columns {sorted(missing)}; it has {dataset.column_names}")
    if max_steps < 1 or batch_size < 1:
        raise ValueError(f"max_steps={max_steps} and batch_size={batch_size} must be positive")
    rows = tokenize_rows(format_rows(dataset, "clean", columns=_COLUMNS), tokenizer)
    rows = rows.select_columns(["input_ids", "labels"])
    args = SFTConfig(
        output_dir=output_dir,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, max_steps * 3 // 100),
        weight_decay=0.0,
        seed=seed,
        save_strategy="no",
        report_to="none",
        logging_steps=max(1, max_steps // 10),
        bf16=False,
        use_cpu=True,
        # small models: recomputing activations would only cost time
        activation_checkpointing=False,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    trainer.train()
    return model.eval()
