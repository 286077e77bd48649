"""`scinterpreter.recipe`: one recipe, written once, shared by the config, processor, `build_model` and train.py."""

import inspect
from dataclasses import asdict

import pytest
import torch
from conftest import make_tiny_backbone

from configuration_scinterpreter import ScInterpreterConfig
from processing_scinterpreter import ScInterpreterProcessor
from scinterpreter import build
from scinterpreter.genes import build_gene_table, load_gene_descriptions
from scinterpreter.recipe import CONFIG_FIELDS, PROCESSOR_FIELDS, Recipe
from scinterpreter.train import parse_arguments

# Where a folder saved without the field means something else than what new models are built with. To change the
# recipe's value of any other field the config or processor shares, decide here whether older folders keep theirs.
OLDER_FOLDERS_MEAN = {"soft_token_rms": None, "gene_selection": None, "gene_dropout": 0.0, "n_top_genes": 64,
                      "cell_pooling": "class_token", "linear_gene_scores": False, "n_linear_genes": 0,
                      "linear_gene_selection": "top", "unassigned_score": "max_probability"}


def defaults(function) -> dict:
    return {name: parameter.default for name, parameter in inspect.signature(function).parameters.items()
            if parameter.default is not inspect.Parameter.empty}


def test_train_py_parses_the_recipe_defaults():
    _, recipe, _ = parse_arguments([])
    assert recipe == Recipe()


@pytest.mark.parametrize("cls", [ScInterpreterConfig, ScInterpreterProcessor])
def test_config_and_processor_defaults_are_the_recipes_except_what_older_folders_mean(cls):
    recipe, own = asdict(Recipe()), defaults(cls.__init__)
    shared = sorted(set(own) & set(recipe))
    assert "n_top_genes" in shared
    assert {name: own[name] for name in shared} == {name: OLDER_FOLDERS_MEAN.get(name, recipe[name]) for name in shared}


def test_build_model_passes_every_field_the_recipe_shares_with_the_config_and_processor():
    recipe = set(asdict(Recipe()))
    # soft_token_rms is passed resolved to a number; fit's calibration sets unassigned_score.
    config = set(defaults(ScInterpreterConfig.__init__))
    assert config & recipe == {*CONFIG_FIELDS, "soft_token_rms", "unassigned_score"}
    assert set(defaults(ScInterpreterProcessor.__init__)) & recipe == set(PROCESSOR_FIELDS)


def test_the_gene_table_default_is_the_recipes():
    table, recipe = defaults(build_gene_table), Recipe()
    assert (table["encoder"], table["center"]) == (recipe.gene_encoder, recipe.center_gene_table)


def test_build_model_by_default_builds_what_train_py_trains(tmp_path, monkeypatch):
    _, recipe, _ = parse_arguments([])
    tiny = make_tiny_backbone(tmp_path / "backbone")
    asked, real_load_backbone = {}, build.load_backbone

    def load_backbone(name, num_layers, dtype=None):  # what the recipe asks for, answered with a tiny stand-in
        asked["backbone"] = (name, num_layers)
        return real_load_backbone(str(tiny), None, dtype=dtype)

    def gene_table(descriptions=None, encoder=None, center=None):
        asked["gene_table"] = (encoder, center)
        return build_gene_table(load_gene_descriptions().head(50), encoder="random", center=center)

    monkeypatch.setattr(build, "load_backbone", load_backbone)
    monkeypatch.setattr(build, "build_gene_table", gene_table)
    model, processor = build.build_model(["a", "b"], backbone_dtype=torch.float32)

    assert asked == {"backbone": (recipe.backbone, recipe.num_backbone_layers),
                     "gene_table": (recipe.gene_encoder, recipe.center_gene_table)}
    assert model.config.backbone_name_or_path == recipe.backbone
    assert {name: getattr(model.config, name) for name in CONFIG_FIELDS} == {name: getattr(recipe, name)
                                                                             for name in CONFIG_FIELDS}
    assert {name: getattr(processor, name) for name in PROCESSOR_FIELDS} == {name: getattr(recipe, name)
                                                                             for name in PROCESSOR_FIELDS}
    assert recipe.soft_token_rms == "auto"
    embeddings = model.model.language_model.embed_tokens.weight.float()
    assert model.config.soft_token_rms == pytest.approx(float(embeddings.pow(2).mean().sqrt()), abs=1e-4)
