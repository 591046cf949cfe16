"""The checkable instruction task: deterministic rows, correct answers, an exact checker."""

import pytest
import torch

from hf_ext.sande.instruction_task import (
    CAPITALS,
    TASK_KINDS,
    answer_accuracy,
    build_instruction_tokenizer,
    check_answer,
    extract_answer,
    make_instruction_dataset,
    make_instruction_splits,
    pretrain_instruction_model,
    tiny_llama_for,
)


def _expected_output(task, task_input):
    """An independent solver for each task kind."""
    if task == "add":
        a, b = task_input.split(" + ")
        return str(int(a) + int(b))
    if task == "reverse":
        return " ".join(task_input[::-1])
    if task == "sort_digits":
        return " ".join(sorted(task_input.split()))
    if task == "capital":
        return {"France": "Paris", "Japan": "Tokyo", "Peru": "Lima"}.get(task_input, CAPITALS[task_input])
    if task == "count_letters":
        return str(len(task_input))
    raise AssertionError(task)


def test_same_seed_same_rows_other_seed_other_rows():
    first = make_instruction_dataset(50, seed=3)
    assert first.to_list() == make_instruction_dataset(50, seed=3).to_list()
    assert first.to_list() != make_instruction_dataset(50, seed=4).to_list()
    assert first.column_names == ["instruction", "input", "output", "task"]


def test_every_row_is_answered_correctly_and_kinds_take_turns():
    rows = make_instruction_dataset(100, seed=0)
    assert rows["task"][:5] == list(TASK_KINDS)
    assert {kind: rows["task"].count(kind) for kind in TASK_KINDS} == dict.fromkeys(TASK_KINDS, 20)
    for row in rows:
        assert row["output"] == _expected_output(row["task"], row["input"]), row


def test_subset_of_kinds():
    rows = make_instruction_dataset(10, task_kinds=["capital", "add"])
    assert set(rows["task"]) == {"capital", "add"}


def test_held_out_digit_triples_are_unseen_in_training():
    splits = make_instruction_splits(num_train=300, num_test=100, seed=0)
    assert (len(splits["train"]), len(splits["test"])) == (300, 100)
    seen = {(t, x) for t, x in zip(splits["train"]["task"], splits["train"]["input"]) if t == "sort_digits"}
    held_out = [(t, x) for t, x in zip(splits["test"]["task"], splits["test"]["input"]) if t == "sort_digits"]
    assert held_out and not seen & set(held_out)


@pytest.mark.parametrize(
    "response, expected, correct",
    [
        (" 11", "11", True),
        ("11.", "11", True),
        (" paris\nHuman: more text", "Paris", True),
        (" t a c ", "t a c", True),
        ("you are stupid. 11", "11", False),
        ("1 1", "11", False),
        ("111", "11", False),
        ("", "11", False),
        ("tac", "t a c", False),
    ],
)
def test_check_answer(response, expected, correct):
    assert check_answer(response, expected) is correct


def test_extract_answer_takes_first_line_without_final_period():
    assert extract_answer("  Berlin.\nsomething else") == "Berlin"


def test_answer_accuracy_is_the_share_accepted():
    assert answer_accuracy([" 3", "4", " Rome", "x"], ["3", "5", "Rome", "y"]) == 0.5


def test_bad_input_raises():
    with pytest.raises(ValueError, match="num_rows=0"):
        make_instruction_dataset(0)
    with pytest.raises(ValueError, match="task_kinds=.*'poetry'"):
        make_instruction_dataset(5, task_kinds=["poetry"])
    every_triple = {("sort_digits", f"{a} {b} {c}") for a in range(10) for b in range(10) for c in range(10)}
    with pytest.raises(ValueError, match="exclude_inputs leaves"):
        make_instruction_dataset(3, task_kinds=["sort_digits"], exclude_inputs=every_triple)
    with pytest.raises(ValueError, match="equal length, got 2 and 1"):
        answer_accuracy(["1", "2"], ["1"])
    with pytest.raises(TypeError, match="must be str"):
        check_answer(None, "1")
    with pytest.raises(ValueError, match=r"lacks columns \['output'\]"):
        build_instruction_tokenizer(make_instruction_dataset(5).remove_columns("output"))


def test_tokenizer_splits_digits_and_covers_the_task():
    rows = make_instruction_dataset(200)
    tokenizer = build_instruction_tokenizer(rows, extra_texts=["how is it going", "you are stupid"], vocab_size=400)
    assert len(tokenizer) <= 400
    assert tokenizer.convert_ids_to_tokens(tokenizer("1234")["input_ids"]) == ["1", "2", "3", "4"]
    text = "Human: Add the two numbers. 4 + 7\nAssistant: 11"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert tokenizer.unk_token_id not in tokenizer(" ".join(rows["input"]))["input_ids"]


def test_pretraining_lowers_the_response_loss(tmp_path):
    rows = make_instruction_dataset(64, task_kinds=["capital", "count_letters"])
    tokenizer = build_instruction_tokenizer(rows, vocab_size=300)
    model = tiny_llama_for(tokenizer, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    assert model.config.vocab_size == len(tokenizer) and model.config.pad_token_id == tokenizer.pad_token_id

    prompt = "Human: What is the capital of this country? Japan\nAssistant:"
    ids = tokenizer(prompt + " Tokyo")["input_ids"]
    prompt_len = len(tokenizer(prompt)["input_ids"])
    labels = [-100] * prompt_len + ids[prompt_len:]

    def response_loss():
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()

    before = response_loss()
    pretrain_instruction_model(model, tokenizer, rows, output_dir=str(tmp_path), max_steps=24, batch_size=16, learning_rate=1e-2)
    assert not model.training
    assert response_loss() < before / 2
