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
    # Tiny models gain nothing from a second thread; on a shared machine its spin-waiting costs more than the work.
    torch.set_num_threads(1)


class HubRecorder:
    """Stands in for the network side of `huggingface_hub.HfApi` and records what would be sent.

    `upload_folder` asks huggingface_hub's own `_prepare_upload_folder_additions` which files the
    upload would add (the real file selection) and copies them into `remote/<repo_id>`, the
    repository as the Hub would hold it.
    """

    def __init__(self, monkeypatch, remote):
        from huggingface_hub import HfApi

        self.calls, self.remote = [], remote
        monkeypatch.setattr(HfApi, "create_repo", self.create_repo)
        monkeypatch.setattr(HfApi, "create_branch", self.create_branch)
        monkeypatch.setattr(HfApi, "upload_folder", self.upload_folder)
        monkeypatch.setattr(HfApi, "_validate_yaml", self.validate_yaml)

    def create_repo(self, repo_id, **kwargs):
        from huggingface_hub import RepoUrl

        self.calls.append(("create_repo", repo_id, kwargs))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def validate_yaml(self, content, **kwargs):
        from huggingface_hub import ModelCard

        self.calls.append(("validate_yaml", ModelCard(content).data.to_dict(), kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        import shutil

        from huggingface_hub import CommitInfo, HfApi

        operations = HfApi()._prepare_upload_folder_additions(
            folder_path, kwargs.get("path_in_repo"), ignore_patterns=kwargs.get("ignore_patterns")
        )
        self.calls.append(("upload_folder", repo_id, dict(kwargs, operations=operations)))
        for operation in operations:
            target = self.remote / repo_id / operation.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(operation.path_or_fileobj, target)
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/abc",
            commit_message=kwargs.get("commit_message"),
            commit_description="",
            oid="abc",
        )

    def uploaded_files(self, repo_id) -> list[str]:
        return sorted(p.relative_to(self.remote / repo_id).as_posix() for p in (self.remote / repo_id).rglob("*") if p.is_file())


@pytest.fixture
def hub_recorder(monkeypatch, tmp_path):
    return HubRecorder(monkeypatch, tmp_path / "remote")
