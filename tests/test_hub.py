"""Model cards render and parse back; the push helper sends exactly the saved folder."""

from pathlib import Path

import pytest
from huggingface_hub import EvalResult, ModelCard

from hf_ext.hub import available_templates, push_folder_to_hub, render_model_card, save_model_card


_PERPLEXITY = dict(
    task_type="text-generation",
    dataset_type="wikitext",
    dataset_name="WikiText-103",
    metric_type="perplexity",
    metric_name="Perplexity",
    metric_value=12.5,
)


def test_every_shipped_template_renders_and_parses_back(tmp_path):
    assert {"conv_basis", "sande", "parrot_prompt", "pose_transfer"} <= set(available_templates())
    for template in available_templates():
        from jinja2 import Environment, meta

        from hf_ext import hub

        source = hub._template_source(template)
        needed = meta.find_undeclared_variables(Environment().parse(source)) - hub._PROVIDED_VARIABLES
        variables = {name: {"example_setting": 1} for name in needed}
        path = save_model_card(
            tmp_path / template,
            template,
            model_name="org/tiny-model",
            base_model="org/base-model",
            datasets=["org/data"],
            tags=["example"],
            eval_results=[_PERPLEXITY],
            **variables,
        )
        card = ModelCard.load(path)
        assert card.data.license == "apache-2.0"
        assert card.data.base_model == "org/base-model"
        assert set(card.data.tags) == {"hf_ext", "example"}
        assert card.data.eval_results[0].metric_value == 12.5
        assert card.data.eval_results[0].dataset_name == "WikiText-103"
        assert "org/tiny-model" in card.text


def test_eval_results_accept_eval_result_objects():
    result = EvalResult(**_PERPLEXITY)
    card = render_model_card(
        "conv_basis", model_name="org/m", eval_results=[result], settings={"num_bases": 8}
    )
    parsed = ModelCard(str(card))
    assert parsed.data.eval_results == [result]
    assert "| `num_bases` | `8` |" in parsed.text


def test_unknown_template_names_the_available_ones():
    with pytest.raises(ValueError, match=r"template='nope'.*conv_basis"):
        render_model_card("nope", model_name="org/m")


def test_missing_template_variable_is_named():
    with pytest.raises(ValueError, match=r"needs the variables \['settings'\]"):
        render_model_card("conv_basis", model_name="org/m")


def test_missing_metadata_is_rejected():
    with pytest.raises(ValueError, match="model_name"):
        render_model_card("conv_basis", model_name="", settings={})
    with pytest.raises(ValueError, match="license"):
        render_model_card("conv_basis", model_name="org/m", license="", settings={})
    with pytest.raises(ValueError, match=r"missing \['metric_value'\]"):
        render_model_card(
            "conv_basis",
            model_name="org/m",
            settings={},
            eval_results=[{k: v for k, v in _PERPLEXITY.items() if k != "metric_value"}],
        )


@pytest.fixture
def saved_folder(tmp_path):
    folder = tmp_path / "saved"
    (folder / "nested").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    (folder / "nested" / "extra.json").write_text("{}")
    save_model_card(folder, "conv_basis", model_name="org/m", settings={"num_bases": 4})
    return folder


def test_push_sends_exactly_the_saved_files(saved_folder, hub_recorder):
    api = hub_recorder
    push_folder_to_hub(saved_folder, "org/m", commit_message="Add model", private=True, revision="v1")

    names = [call[0] for call in api.calls]
    assert names == ["create_repo", "create_branch", "validate_yaml", "upload_folder"]
    assert api.calls[0][2]["private"] is True
    assert api.calls[1][2]["branch"] == "v1"
    assert api.calls[2][1]["license"] == "apache-2.0"  # the card's metadata goes to the Hub's validator
    commit = api.calls[3][2]
    assert commit["commit_message"] == "Add model"
    assert commit["revision"] == "v1"
    sent = sorted(op.path_in_repo for op in commit["operations"])
    expected = sorted(p.relative_to(saved_folder).as_posix() for p in saved_folder.rglob("*") if p.is_file())
    assert sent == expected == ["README.md", "config.json", "model.safetensors", "nested/extra.json"]


def test_push_leaves_out_ignored_files(saved_folder, hub_recorder):
    push_folder_to_hub(saved_folder, "org/m", ignore_patterns=["nested/*"])
    assert hub_recorder.uploaded_files("org/m") == ["README.md", "config.json", "model.safetensors"]


@pytest.mark.parametrize("repo_id", ["org/has space", "a/b/c", "org/--double", ""])
def test_push_rejects_invalid_repo_id_before_any_call(repo_id, saved_folder, hub_recorder):
    api = hub_recorder
    with pytest.raises(ValueError, match="repo_id="):
        push_folder_to_hub(saved_folder, repo_id)
    assert api.calls == []


def test_push_requires_a_model_card(tmp_path, hub_recorder):
    api = hub_recorder
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no README.md"):
        push_folder_to_hub(tmp_path, "org/m")
    with pytest.raises(ValueError, match="not a directory"):
        push_folder_to_hub(Path(tmp_path) / "missing", "org/m")
    assert api.calls == []
