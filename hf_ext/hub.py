"""Model cards and Hub uploads shared by the three systems.

Every artifact this package saves carries a README.md rendered from a template in
`model_cards/` (installed as `hf_ext.model_cards`): a YAML metadata block built with
`huggingface_hub.ModelCardData` (license, library, tags, base model, datasets and the
measured results as `EvalResult`s, which the Hub shows as an evaluation widget) and a
Jinja body. `push_folder_to_hub` uploads a saved folder with one commit.
"""

import logging
from importlib import resources
from pathlib import Path

import jinja2
import jinja2.meta
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id


logger = logging.getLogger(__name__)

# Variables every template may use without the caller passing them: `card_data` is
# the rendered YAML block (filled by `ModelCard.from_template`), the rest come from
# the metadata arguments of `render_model_card`.
_PROVIDED_VARIABLES = {"card_data", "model_name", "base_model", "datasets", "eval_results", "tags", "license"}


def available_templates() -> list[str]:
    """Names of the model-card templates shipped with the package."""
    return sorted(p.name[: -len(".md")] for p in resources.files("hf_ext.model_cards").iterdir() if p.name.endswith(".md"))


def _template_source(template: str) -> str:
    path = resources.files("hf_ext.model_cards") / f"{template}.md"
    if not path.is_file():
        raise ValueError(f"template={template!r} is not a model-card template; expected one of {available_templates()}")
    return path.read_text(encoding="utf-8")


def _as_eval_result(result) -> EvalResult:
    if isinstance(result, EvalResult):
        return result
    if not isinstance(result, dict):
        raise TypeError(f"eval_results entries must be EvalResult or dict, got {type(result).__name__}")
    required = ("task_type", "dataset_type", "dataset_name", "metric_type", "metric_value")
    missing = [key for key in required if key not in result]
    if missing:
        raise ValueError(f"eval_results entry {result} is missing {missing}; required keys are {list(required)}")
    return EvalResult(**result)


def render_model_card(
    template: str,
    *,
    model_name: str,
    license: str = "apache-2.0",
    library_name: str = "transformers",
    tags: list[str] | None = None,
    base_model: str | list[str] | None = None,
    datasets: str | list[str] | None = None,
    eval_results: list | None = None,
    pipeline_tag: str | None = None,
    **template_variables,
) -> ModelCard:
    """Render a model card from a template in `model_cards/`.

    Args:
        template (`str`): template name, the file name in `model_cards/` without `.md`
            (see `available_templates()`).
        model_name (`str`): name shown in the card and used for the evaluation results.
        license (`str`, defaults to `"apache-2.0"`): license identifier for the metadata.
        library_name (`str`, defaults to `"transformers"`): library that loads the artifact.
        tags (`list[str]`, *optional*): extra tags; `"hf_ext"` is always added.
        base_model (`str` or `list[str]`, *optional*): Hub id(s) the artifact derives from.
        datasets (`str` or `list[str]`, *optional*): Hub id(s) or names of the training data.
        eval_results (`list[EvalResult | dict]`, *optional*): measured results; dicts take
            `EvalResult`'s keyword arguments.
        pipeline_tag (`str`, *optional*): Hub pipeline tag, e.g. `"text-generation"`.
        **template_variables: values for the template's own variables; every variable the
            template uses must be given.

    Returns:
        `huggingface_hub.ModelCard`: the card, whose `.data` is the parsed metadata.
    """
    source = _template_source(template)
    needed = jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(source)) - _PROVIDED_VARIABLES
    missing = sorted(needed - set(template_variables))
    if missing:
        raise ValueError(f"template {template!r} needs the variables {missing}; got {sorted(template_variables)}")
    if not model_name:
        raise ValueError("model_name must be a non-empty string")
    if not license:
        raise ValueError("license must be a non-empty license identifier, e.g. 'apache-2.0'")
    if not library_name:
        raise ValueError("library_name must be a non-empty string, e.g. 'transformers'")

    card_data = ModelCardData(
        model_name=model_name,
        license=license,
        library_name=library_name,
        tags=sorted({"hf_ext", *(tags or [])}),
        base_model=base_model,
        datasets=datasets,
        pipeline_tag=pipeline_tag,
        eval_results=[_as_eval_result(r) for r in eval_results] if eval_results else None,
    )
    return ModelCard.from_template(
        card_data,
        template_str=source,
        model_name=model_name,
        base_model=base_model,
        datasets=datasets,
        eval_results=card_data.eval_results or [],
        tags=card_data.tags,
        license=license,
        **template_variables,
    )


def save_model_card(save_directory, template: str, **kwargs) -> Path:
    """Render a card (see `render_model_card` for the arguments) and write it as
    `README.md` in `save_directory`, next to the saved weights. Returns the file path."""
    card = render_model_card(template, **kwargs)
    path = Path(save_directory) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    card.save(path)
    return path


def push_folder_to_hub(
    folder,
    repo_id: str,
    *,
    commit_message: str = "Upload with hf_ext",
    private: bool | None = None,
    revision: str | None = None,
    token: str | None = None,
    create_pr: bool = False,
    ignore_patterns: list[str] | None = None,
):
    """Upload a folder written by `save_pretrained` (with its README.md) to the Hub.

    Creates the repository if needed (and the branch `revision`), then uploads the whole
    folder in one commit. Everything is validated before anything is sent.

    Args:
        folder (`str` or `Path`): the saved folder; must contain a README.md model card.
        repo_id (`str`): `"org/name"` or `"name"`.
        commit_message (`str`, defaults to `"Upload with hf_ext"`): message of the commit.
        private (`bool`, *optional*): visibility of a newly created repository.
        revision (`str`, *optional*): branch to push to; created from main if missing.
        token (`str`, *optional*): Hub token; the cached login by default.
        create_pr (`bool`, defaults to `False`): open a pull request instead of committing.
        ignore_patterns (`list[str]`, *optional*): glob patterns of files to leave out, e.g.
            `["checkpoints/*"]`.

    Returns:
        `huggingface_hub.CommitInfo` of the upload.
    """
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"repo_id={repo_id!r} is not a valid Hub repository id: {error}") from None
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder={str(folder)!r} is not a directory")
    if not (folder / "README.md").is_file():
        raise ValueError(f"folder={str(folder)!r} has no README.md model card; write one with save_model_card first")

    api = HfApi(token=token)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(repo_url.repo_id, branch=revision, exist_ok=True)
    logger.info("Uploading %s to %s", folder, repo_url.repo_id)
    return api.upload_folder(
        repo_id=repo_url.repo_id,
        folder_path=folder,
        commit_message=commit_message,
        revision=revision,
        create_pr=create_pr,
        ignore_patterns=ignore_patterns,
    )


class JSONTrainingArgumentsMixin:
    """For `transformers.Trainer` subclasses: keep the training arguments next to saved weights as
    `training_args.json`, not as the pickled `training_args.bin` the Trainer writes (artifacts of this
    package hold safetensors and JSON only). Put it before the Trainer class in the bases."""

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)
        folder = Path(output_dir or self.args.output_dir)
        pickled = folder / "training_args.bin"
        if self.args.should_save and pickled.is_file():
            pickled.unlink()
            (folder / "training_args.json").write_text(self.args.to_json_string(), encoding="utf-8")
