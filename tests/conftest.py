"""Every test runs offline, seeded, on one thread per process."""

import os


# Set before transformers / huggingface_hub are imported anywhere in the session.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import set_seed  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    set_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from hf_ext.testing import train_tiny_tokenizer

    return train_tiny_tokenizer()


def pytest_configure(config):
    torch.set_num_threads(min(2, torch.get_num_threads()))
