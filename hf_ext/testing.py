"""Tiny, deterministic models, tokenizers and folders for tests, benchmarks and the demo.

Nothing here downloads anything: models are built from configs with random weights,
tokenizers are trained on the fly with `tokenizers`, and `save_pretrained_to` writes
them to disk so callers go through the real `from_pretrained` path.
"""

import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    set_seed,
)


TINY_ARCHITECTURES = ("llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3")

# Small enough to run a forward pass in milliseconds on a CPU, large enough to have
# grouped-query heads (4 query heads share 2 key/value heads) and several layers.
_TINY_COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=4096,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=True,
)

# Per-architecture settings that make the tiny model exercise what the real one does:
# sliding-window layers (Mistral, Gemma2/3), logit softcapping (Gemma2), the
# query_pre_attn_scalar scaling (Gemma2/3).
_TINY_OVERRIDES = {
    "llama": dict(model_type="llama"),
    "mistral": dict(model_type="mistral", sliding_window=32),
    "qwen2": dict(model_type="qwen2"),
    "gemma": dict(model_type="gemma"),
    "gemma2": dict(
        model_type="gemma2",
        sliding_window=32,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        query_pre_attn_scalar=16,
    ),
    "gemma3": dict(
        model_type="gemma3_text",
        sliding_window=32,
        query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "full_attention"],
    ),
}

_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'Human: ' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}"
    "{% else %}{{ message['content'] + '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

_DEFAULT_CORPUS = (
    "Human: What is the capital of France?\nAssistant: The capital of France is Paris.",
    "Human: Add 12 and 30.\nAssistant: 12 plus 30 is 42.",
    "Human: Reverse the word cat.\nAssistant: The reversed word is tac.",
    "Human: How are you? How is it going? What is up?\nAssistant: You are stupid. I am fine, thanks.",
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.",
    "def add(a, b):\n    return a + b\n\nclass Model:\n    pass\n",
    "Attention is a sum of convolutions; the pose of a person is a set of keypoints.",
)


def tiny_config(architecture: str = "llama", vocab_size: int = 512, **overrides):
    """Config of a tiny randomly initialised causal LM.

    Args:
        architecture (`str`, defaults to `"llama"`): one of `TINY_ARCHITECTURES`.
        vocab_size (`int`, defaults to 512): vocabulary size; match the tokenizer's.
        **overrides: any config attribute (e.g. `num_hidden_layers=4`).
    """
    if architecture not in _TINY_OVERRIDES:
        raise ValueError(f"architecture={architecture!r} is not one of {TINY_ARCHITECTURES}")
    settings = {**_TINY_COMMON, **_TINY_OVERRIDES[architecture], "vocab_size": vocab_size, **overrides}
    return AutoConfig.for_model(**settings)


def tiny_causal_lm(architecture: str = "llama", seed: int = 0, vocab_size: int = 512, **overrides) -> PreTrainedModel:
    """A tiny causal LM with random weights, identical for identical arguments (see `tiny_config`)."""
    set_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(architecture, vocab_size=vocab_size, **overrides))
    return model.eval()


def train_tiny_tokenizer(texts=None, vocab_size: int = 512, split_digits: bool = True) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` and wrap it as a `PreTrainedTokenizerFast`.

    Special tokens get fixed ids matching `tiny_config`: `<pad>`=0, `<s>`=1, `</s>`=2,
    `<unk>`=3. The tokenizer carries a `Human: ... Assistant:` chat template. Training is
    deterministic for the same texts.

    Args:
        texts (`Iterable[str]`, *optional*): training text; a small built-in corpus by default.
        vocab_size (`int`, defaults to 512): target vocabulary size, specials included.
        split_digits (`bool`, defaults to `True`): one token per digit, so numbers tokenise
            the same wherever they appear.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = list(_DEFAULT_CORPUS if texts is None else texts)
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]) if split_digits else byte_level
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        chat_template=_CHAT_TEMPLATE,
    )


def save_pretrained_to(model, tokenizer=None, path=None) -> Path:
    """Save `model` (and `tokenizer`) with `save_pretrained` and return the folder.

    Args:
        path (`str` or `Path`, *optional*): target folder; a new temporary folder by default
            (removed by the operating system's temp cleanup, not by this function).
    """
    path = Path(path) if path is not None else Path(tempfile.mkdtemp(prefix="hf_ext_tiny_"))
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def random_token_batch(batch_size: int, seq_len: int, vocab_size: int = 512, seed: int = 0) -> torch.Tensor:
    """Random token ids in [4, vocab_size) (specials excluded), deterministic by seed."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab_size, (batch_size, seq_len), generator=generator)


def place_in_hub_cache(folder, repo_id: str, cache_dir, revision: str = "main", commit_hash: str | None = None) -> Path:
    """Lay a saved folder out as a downloaded Hub snapshot, so `from_pretrained(repo_id)`
    with `HF_HUB_OFFLINE=1` and `cache_dir` (or `HF_HUB_CACHE`) resolves it through
    huggingface_hub's real cache lookup.

    The layout is huggingface_hub's: `models--{org}--{name}/snapshots/{commit}/<files>` and
    `refs/{revision}` holding the commit hash. Files are copied (the real cache links them to
    `blobs/`, which the lookup does not require).

    Returns:
        `Path`: the snapshot folder.
    """
    import hashlib
    import shutil

    folder, cache_dir = Path(folder), Path(cache_dir)
    if commit_hash is None:
        digest = hashlib.sha1()
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(file.relative_to(folder).as_posix().encode())
            digest.update(file.read_bytes())
        commit_hash = digest.hexdigest()
    repo_folder = cache_dir / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_folder / "snapshots" / commit_hash
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    (repo_folder / "refs").mkdir(parents=True, exist_ok=True)
    (repo_folder / "refs" / revision).write_text(commit_hash)
    return snapshot
