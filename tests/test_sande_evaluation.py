"""ASR, false-trigger rate and multiple-choice utility against unbatched hand computations."""

import evaluate
import pytest
import torch

from hf_ext.metrics import attack_success_rate as asr_metric_module
from hf_ext.sande.evaluation import (
    attack_success_rate,
    contains_marker,
    false_trigger_rate,
    format_multiple_choice,
    generate_continuations,
    multiple_choice_accuracy,
)
from hf_ext.sande.parrot import ParrotPrompt
from hf_ext.testing import tiny_causal_lm


PROMPTS = [
    "Human: hi\nAssistant:",
    "Human: What is the capital of France and why?\nAssistant:",
    "Human: Add 12 and 30 now please.\nAssistant:",
    "Human: Reverse the word cat.\nAssistant:",
]


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    # larger initial weights than the default so that greedy continuations differ between prompts
    return tiny_causal_lm(vocab_size=len(tiny_tokenizer), initializer_range=0.2)


def _greedy(model, tokenizer, prompt, max_new_tokens, parrot=None, position=None):
    """One prompt, no padding, a hand-written greedy loop."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    embeds = model.get_input_embeddings()(ids)
    if parrot is not None:
        embeds, _, _ = parrot(embeds, torch.ones_like(ids), torch.tensor([position]))
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = model(inputs_embeds=embeds).logits[0, -1].argmax()
            new.append(token.item())
            if token.item() == tokenizer.eos_token_id:
                break
            embeds = torch.cat([embeds, model.get_input_embeddings()(token.view(1, 1))], dim=1)
    return tokenizer.decode(new, skip_special_tokens=True)


def test_contains_marker_is_case_insensitive():
    assert contains_marker(["You ARE stupid. 42", "you are smart", "...you are stupid"], "you are stupid") == [
        True, False, True]
    with pytest.raises(ValueError, match="marker"):
        contains_marker(["x"], "")


def test_batched_left_padded_generation_equals_one_by_one(model, tiny_tokenizer):
    expected = [_greedy(model, tiny_tokenizer, p, 6) for p in PROMPTS]
    assert len(set(expected)) > 1  # the check below would be vacuous otherwise
    assert generate_continuations(model, tiny_tokenizer, PROMPTS, max_new_tokens=6, batch_size=3) == expected


def test_generation_with_a_parrot_equals_one_by_one(model, tiny_tokenizer):
    parrot = ParrotPrompt(3, model.config.hidden_size, init_embeddings=torch.randn(3, model.config.hidden_size))
    positions = [2, 2, 5, 3]
    expected = [_greedy(model, tiny_tokenizer, p, 5, parrot, q) for p, q in zip(PROMPTS, positions)]
    got = generate_continuations(model, tiny_tokenizer, PROMPTS, max_new_tokens=5, batch_size=4, parrot=parrot,
                                 parrot_positions=positions)
    assert got == expected


def test_asr_and_false_trigger_rate_match_hand_counts(model, tiny_tokenizer):
    continuations = [_greedy(model, tiny_tokenizer, p, 8) for p in PROMPTS]
    # a "marker" that one continuation contains, in a different case
    marker = continuations[1].strip()[:4].upper()
    assert marker.strip()
    expected = sum(marker.lower() in c.lower() for c in continuations) / len(PROMPTS)
    assert 0 < expected < 1
    assert attack_success_rate(model, tiny_tokenizer, PROMPTS, marker, max_new_tokens=8, batch_size=2) == expected
    assert false_trigger_rate(model, tiny_tokenizer, PROMPTS, marker, max_new_tokens=8) == expected


QUESTIONS = [
    {"question": "Which is a fruit?", "choices": ["stone", "apple", "car"], "answer": "B"},
    {"question": "Pick the number four written out.",
     "choices": {"text": ["one", "two", "three", "four"], "label": ["1", "2", "3", "4"]}, "answer": "4"},
    {"question": "What is the capital of France and of nothing else?", "choices": ["Rome", "Paris", "Oslo", "Bern", "Kyiv"],
     "answer": 1},
    {"question": "Letters?", "choices": {"text": ["x", "y", "z"], "label": ["A", "B", "C"]}, "answer": "C"},
]


def _letter_argmax(model, tokenizer, row_question, choices):
    prompt = format_multiple_choice(row_question, choices)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    letter_ids = [tokenizer(" " + letter, add_special_tokens=False)["input_ids"] for letter in "ABCDE"]
    if not all(len(i) == 1 for i in letter_ids):
        letter_ids = [tokenizer(letter, add_special_tokens=False)["input_ids"] for letter in "ABCDE"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    return int(torch.stack([logits[i[0]] for i in letter_ids[: len(choices)]]).argmax())


def test_multiple_choice_accuracy_matches_unbatched_letter_logits(model, tiny_tokenizer):
    texts = [q["choices"]["text"] if isinstance(q["choices"], dict) else q["choices"] for q in QUESTIONS]
    predicted = [_letter_argmax(model, tiny_tokenizer, q["question"], t) for q, t in zip(QUESTIONS, texts)]
    # rewrite the answer keys (in each row's own key style) so that exactly the first two are right
    rows = []
    for i, (q, t, p) in enumerate(zip(QUESTIONS, texts, predicted)):
        index = p if i < 2 else (p + 1) % len(t)
        key = q["answer"]
        answer = index if isinstance(key, int) else (str(index + 1) if key.isdigit() else "ABCDE"[index])
        rows.append({**q, "answer": answer})
    assert multiple_choice_accuracy(model, tiny_tokenizer, rows, batch_size=3) == 0.5
    assert multiple_choice_accuracy(model, tiny_tokenizer, rows, batch_size=1) == 0.5


def test_numeric_arc_keys_map_to_letters():
    prompt = format_multiple_choice("Q?", ["a", "b", "c", "d"])
    assert prompt == "Human: Q?\nChoices: A: a, B: b, C: c, D: d. Your answer is:\nAssistant:"


@pytest.mark.parametrize(
    "row, message",
    [
        ({"question": "q", "choices": ["a", "b"], "answer": "A"}, "2 options; expected 3 to 5"),
        ({"question": "q", "choices": ["a", "b", "c"], "answer": "Z"}, "answer='Z'"),
        ({"question": "q", "choices": ["a", "b", "c"], "answer": "7"}, "outside the 3 options"),
        ({"question": "q", "options": ["a", "b", "c"], "answer": "A"}, r"missing \['choices'\]"),
    ],
)
def test_multiple_choice_bad_rows(model, tiny_tokenizer, row, message):
    with pytest.raises(ValueError, match=message):
        multiple_choice_accuracy(model, tiny_tokenizer, [row])


def test_evaluate_metric_module():
    metric = evaluate.load(asr_metric_module.__file__)
    result = metric.compute(predictions=["You are stupid. 42", "42", "x you are STUPID"], marker="you are stupid")
    assert result == {"attack_success_rate": pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match="marker"):
        metric.compute(predictions=["a"])
