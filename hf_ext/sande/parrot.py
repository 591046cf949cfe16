"""`ParrotPrompt`: the soft trigger learned by SANDE's Simulate stage.

A parrot P is a matrix of `m` soft token embeddings (m = 6 and zero-initialised in the official
runs). It is spliced into a prompt's input embeddings at the token index where a trigger would sit
(`parrot_position`, located per example by `hf_ext.sande.data.tokenize_rows`), so the sequence grows
by `m`: attention mask 1 and label -100 at the parrot's slots, the original tokens shifted right.
Dropping the labels of the parrot's slots is what keeps the loss aligned with the original tokens.

Saved as `config.json` + `model.safetensors` (+ `README.md` from `model_cards/parrot_prompt.md`),
loaded from a folder or a Hub repository.
"""

import json
import os
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file, save_file
from torch import nn


CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_PARROT_TYPE = "hf_ext_parrot_prompt"


class ParrotPrompt(nn.Module):
    """m soft token embeddings spliced into `inputs_embeds` at a per-example position.

    Args:
        num_tokens (`int`, defaults to 6): number of soft tokens `m`.
        hidden_size (`int`): embedding size of the model the parrot prompts.
        init_embeddings (`torch.Tensor` of shape `(num_tokens, hidden_size)`, *optional*): initial
            values (e.g. token embeddings, see `from_token_embeddings`); zeros by default, as in the paper.
        base_model (`str`, *optional*): name or path of the model the parrot was learned for, kept in the config.
        trigger_position (`str` or `list[str]`, defaults to `"after_role"`): where the parrot is spliced
            (see `hf_ext.sande.data.TRIGGER_POSITIONS`), kept in the config.
    """

    def __init__(
        self,
        num_tokens: int = 6,
        hidden_size: int | None = None,
        init_embeddings: torch.Tensor | None = None,
        base_model: str | None = None,
        trigger_position="after_role",
    ):
        super().__init__()
        if not isinstance(num_tokens, int) or num_tokens < 1:
            raise ValueError(f"num_tokens={num_tokens!r}; a parrot prompt needs at least 1 soft token")
        if not isinstance(hidden_size, int) or hidden_size < 1:
            raise ValueError(f"hidden_size={hidden_size!r}; expected the model's embedding size (a positive int)")
        if init_embeddings is None:
            init_embeddings = torch.zeros(num_tokens, hidden_size)
        elif tuple(init_embeddings.shape) != (num_tokens, hidden_size):
            raise ValueError(
                f"init_embeddings has shape {tuple(init_embeddings.shape)}; expected ({num_tokens}, {hidden_size})"
            )
        # P in the paper; kept in float32 whatever the model's dtype, cast at the splice
        self.embeddings = nn.Parameter(init_embeddings.detach().clone().float())
        self.base_model = base_model
        self.trigger_position = trigger_position

    @property
    def num_tokens(self) -> int:
        return self.embeddings.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.embeddings.shape[1]

    @classmethod
    def from_token_embeddings(cls, embedding: nn.Embedding, token_ids, **kwargs) -> "ParrotPrompt":
        """A parrot initialised from the embeddings of `token_ids` (e.g. a guess of the trigger's words)."""
        token_ids = torch.as_tensor(token_ids, dtype=torch.long)
        if token_ids.ndim != 1 or token_ids.numel() < 1:
            raise ValueError(f"token_ids={token_ids.tolist()}; expected a non-empty list of token ids")
        init = embedding.weight.detach()[token_ids.to(embedding.weight.device)].cpu()
        return cls(num_tokens=len(token_ids), hidden_size=init.shape[1], init_embeddings=init, **kwargs)

    def check_compatible(self, model) -> None:
        """Raise if this parrot's hidden size does not match `model`'s input embeddings."""
        model_hidden = model.get_input_embeddings().embedding_dim
        if model_hidden != self.hidden_size:
            raise ValueError(
                f"the parrot prompt has hidden_size={self.hidden_size} but the model's embeddings have "
                f"{model_hidden}; a parrot only fits the model (size) it was learned for"
            )

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        parrot_position: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Splice the parrot into each example at its own position.

        Args:
            inputs_embeds (`torch.Tensor` of shape `(batch, seq_len, hidden)`): the prompt's embeddings.
            attention_mask (`torch.Tensor` of shape `(batch, seq_len)`).
            parrot_position (`torch.Tensor` of shape `(batch,)`): index of the token the parrot goes
                before, in the (padded) sequence. A negative value splices nothing into that example:
                its `m` extra slots are appended as padding (mask 0, label -100), which assumes right padding.
            labels (`torch.Tensor` of shape `(batch, seq_len)`, *optional*).

        Returns:
            `tuple`: `(inputs_embeds, attention_mask, labels)`, each `m` longer along the sequence;
            `labels` is `None` when not given.
        """
        batch, seq_len, hidden = inputs_embeds.shape
        if hidden != self.hidden_size:
            raise ValueError(f"inputs_embeds has hidden size {hidden}; the parrot prompt has {self.hidden_size}")
        m = self.num_tokens
        spliced = parrot_position >= 0
        # rows without a parrot get theirs "at the end" and masked out below
        start = torch.where(spliced, parrot_position, torch.full_like(parrot_position, seq_len)).clamp(max=seq_len)
        new_index = torch.arange(seq_len + m, device=inputs_embeds.device).expand(batch, -1)
        offset = new_index - start[:, None]
        is_parrot = (offset >= 0) & (offset < m)
        # new position j holds original token j before the parrot and j - m after it
        source = torch.where(offset < 0, new_index, new_index - m).clamp(0, seq_len - 1)

        gathered = inputs_embeds.gather(1, source[..., None].expand(-1, -1, hidden))
        parrot = self.embeddings.to(inputs_embeds.dtype)[offset.clamp(0, m - 1)]
        new_embeds = torch.where(is_parrot[..., None], parrot, gathered)

        real_parrot = is_parrot & spliced[:, None]
        new_mask = torch.where(is_parrot, real_parrot.to(attention_mask.dtype), attention_mask.gather(1, source))
        new_labels = None
        if labels is not None:
            new_labels = torch.where(is_parrot, torch.full_like(source, -100), labels.gather(1, source))
        return new_embeds, new_mask, new_labels

    def _config(self) -> dict:
        return {
            "model_type": _PARROT_TYPE,
            "num_tokens": self.num_tokens,
            "hidden_size": self.hidden_size,
            "base_model": self.base_model,
            "trigger_position": self.trigger_position,
        }

    def save_pretrained(self, save_directory, model_card_kwargs: dict | None = None) -> Path:
        """Write `config.json`, `model.safetensors` and a model card (`README.md`) to `save_directory`.

        Args:
            save_directory (`str` or `os.PathLike`): target folder, created if needed.
            model_card_kwargs (`dict`, *optional*): extra arguments for `hf_ext.hub.save_model_card`
                (e.g. `model_name`, `settings`).

        Returns:
            `Path`: the folder.
        """
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        save_file({"embeddings": self.embeddings.detach().cpu().contiguous()}, save_directory / WEIGHTS_NAME,
                  metadata={"format": "pt"})
        (save_directory / CONFIG_NAME).write_text(json.dumps(self._config(), indent=2) + "\n", encoding="utf-8")
        self.write_model_card(save_directory, **(model_card_kwargs or {}))
        return save_directory

    def write_model_card(self, save_directory, **card_kwargs) -> Path:
        """Write the parrot's `README.md` (template `model_cards/parrot_prompt.md`) to `save_directory`.

        Args:
            save_directory (`str` or `os.PathLike`): target folder.
            **card_kwargs: arguments of `hf_ext.hub.save_model_card` (`model_name`, `settings`, ...);
                the parrot's own config is added to `settings`.
        """
        from hf_ext.hub import save_model_card

        save_directory = Path(save_directory)
        card = {"model_name": save_directory.name or "parrot-prompt", **card_kwargs}
        card["settings"] = {**self._config(), **card.get("settings", {})}
        if self.base_model and not os.path.isdir(self.base_model):  # a Hub id, not a local folder
            card.setdefault("base_model", self.base_model)
        return save_model_card(save_directory, "parrot_prompt", library_name="hf_ext",
                               tags=["sande", "parrot-prompt"], **card)

    @classmethod
    def from_pretrained(cls, pretrained_path, *, subfolder: str | None = None, revision: str | None = None,
                        token=None) -> "ParrotPrompt":
        """Load a parrot saved with `save_pretrained`, from a folder or a Hub repository id.

        Args:
            pretrained_path (`str` or `os.PathLike`): local folder or Hub repository id.
            subfolder (`str`, *optional*): folder inside it, e.g. `"parrot"` in a model saved by `SANDETrainer`.
            revision (`str`, *optional*): Hub revision.
            token (`str`, *optional*): Hub token.
        """
        path = Path(pretrained_path) / (subfolder or "")
        if path.is_dir():
            config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
            if not config_file.is_file() or not weights_file.is_file():
                raise ValueError(
                    f"{path} is not a saved parrot prompt: expected {CONFIG_NAME} and {WEIGHTS_NAME} in it"
                )
        else:
            hub = dict(subfolder=subfolder, revision=revision, token=token)
            config_file = hf_hub_download(str(pretrained_path), CONFIG_NAME, **hub)
            weights_file = hf_hub_download(str(pretrained_path), WEIGHTS_NAME, **hub)
        config = json.loads(Path(config_file).read_text(encoding="utf-8"))
        if config.get("model_type") != _PARROT_TYPE:
            raise ValueError(f"{pretrained_path} holds a {config.get('model_type')!r}, not a parrot prompt")
        embeddings = load_file(str(weights_file))["embeddings"]
        return cls(
            num_tokens=config["num_tokens"],
            hidden_size=config["hidden_size"],
            init_embeddings=embeddings,
            base_model=config.get("base_model"),
            trigger_position=config.get("trigger_position", "after_role"),
        )

    def push_to_hub(self, repo_id: str, *, commit_message: str = "Upload parrot prompt", private: bool | None = None,
                    token=None, revision: str | None = None, create_pr: bool = False, model_card_kwargs=None):
        """Save to a temporary folder (weights, config, card) and upload it with `hf_ext.hub.push_folder_to_hub`."""
        import tempfile

        from hf_ext.hub import push_folder_to_hub

        with tempfile.TemporaryDirectory() as folder:
            card = {"model_name": repo_id, **(model_card_kwargs or {})}
            self.save_pretrained(folder, model_card_kwargs=card)
            return push_folder_to_hub(folder, repo_id, commit_message=commit_message, private=private,
                                      token=token, revision=revision, create_pr=create_pr)
