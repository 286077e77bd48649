"""The user's data is never changed unless asked, and bad input stops early with a clear error."""

import numpy as np
import pytest
import torch
from conftest import GENES
from transformers import pipeline

from processing_scinterpreter import ScInterpreterProcessor


def _snapshot(adata):
    return {
        "X": adata.X.copy(),
        "layers": {k: v.copy() for k, v in adata.layers.items()},
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "obsm": {k: v.copy() for k, v in adata.obsm.items()},
        "uns": dict(adata.uns),
    }


def _assert_unchanged(adata, before):
    np.testing.assert_array_equal(adata.X, before["X"])
    assert adata.layers.keys() == before["layers"].keys()
    for key, value in before["layers"].items():
        np.testing.assert_array_equal(adata.layers[key], value)
    assert adata.obs.equals(before["obs"]) and list(adata.obs.columns) == list(before["obs"].columns)
    assert adata.var.equals(before["var"])
    assert adata.obsm.keys() == before["obsm"].keys()
    for key, value in before["obsm"].items():
        np.testing.assert_array_equal(adata.obsm[key], value)
    assert adata.uns.keys() == before["uns"].keys()


@pytest.fixture
def rich_adata(adata):
    adata.layers["counts"] = adata.X.copy()
    adata.obsm["X_pca"] = np.random.default_rng(0).normal(size=(adata.n_obs, 3))
    adata.uns["note"] = "mine"
    return adata


@pytest.mark.parametrize("call", ["processor", "normalize", "match_genes", "pipeline", "pipeline_layer"])
def test_public_functions_leave_the_anndata_unchanged_by_default(call, rich_adata, processor, saved_tiny_model):
    before = _snapshot(rich_adata)
    if call == "processor":
        processor(rich_adata)
    elif call == "normalize":
        processor.normalize(rich_adata)
    elif call == "match_genes":
        processor.match_genes(rich_adata.var_names)
    else:
        annotate = pipeline("cell-annotation", model=str(saved_tiny_model), trust_remote_code=True)
        annotate(rich_adata, layer="counts" if call == "pipeline_layer" else None)
    _assert_unchanged(rich_adata, before)


def test_duplicated_gene_names_are_summed_with_a_warning(processor, counts, caplog):
    names = list(GENES)
    names[1] = names[0]
    with caplog.at_level("WARNING"):
        processor(counts, gene_names=names)
    assert "appear more than once" in caplog.text and f"{GENES[0]} -> {GENES[0]}" in caplog.text


# ---------------------------------------------------------------------------------------------------------------------
# Every bad input, whichever entry point it comes through (the processor, the pipeline, train.py and its data
# readers, `training.fit`, loading a model folder), and the words the error must contain; each row of the README's
# "Bad input" table is one or more of these cases.
# ---------------------------------------------------------------------------------------------------------------------
def _matrix_case(make):
    def run(ctx):
        matrix, names = make(ctx["counts"])
        ctx["processor"](matrix, gene_names=names)
    return run


def _pipeline_case(make, **options):
    def run(ctx):
        matrix, names = make(ctx["counts"])
        ctx["annotate"]()(matrix, gene_names=names, **options)
    return run


def _fit_case(make_labels):
    def run(ctx):
        from scinterpreter.training import Recipe, ScInterpreterTrainingArguments, fit

        # The labels are checked before the backbone is read, so none is needed.
        fit(ctx["counts"], make_labels(len(ctx["counts"])), Recipe(backbone=str(ctx["tmp"] / "no-backbone"),
                                                                   gene_encoder="random"),
            ScInterpreterTrainingArguments(output_dir=str(ctx["tmp"] / "fit")), gene_names=GENES)
    return run


def _train_case(make_args):
    def run(ctx):
        import train

        train.main(make_args(ctx) + ["--output_dir", str(ctx["tmp"] / "out"), "--gene_encoder", "random"])
    return run


def _load_case(damage):
    def run(ctx):
        from modeling_scinterpreter import ScInterpreterForCellAnnotation

        folder = ctx["saved"]
        damage(folder)
        ScInterpreterForCellAnnotation.from_pretrained(folder)
    return run


def _relabel(path, column, values):
    import anndata

    adata = anndata.read_h5ad(path)
    adata.obs[column] = values(adata)
    adata.write_h5ad(path)
    return path


BAD_INPUTS = [
    ("bare matrix without gene names", _matrix_case(lambda c: (c, None)), "gene_names is required"),
    ("matrix width differs from gene_names", _matrix_case(lambda c: (c[:, :-1], GENES)), "44 columns but 45 gene names"),
    ("no matching genes (random strings)", _matrix_case(lambda c: (c, [f"zz{i}q" for i in range(c.shape[1])])),
     "match the model's gene vocabulary.*look like"),
    ("no matching genes (probe IDs)", _matrix_case(lambda c: (c, [f"{200000 + i}_at" for i in range(c.shape[1])])),
     "match the model's gene vocabulary.*look like"),
    ("negative values (scaled data)", _matrix_case(lambda c: (c - 1, GENES)), "negative values"),
    ("NaN values", _matrix_case(lambda c: (np.where(c > 3, np.nan, c), GENES)), "NaN or infinite"),
    ("infinite values", _matrix_case(lambda c: (np.where(c > 3, np.inf, c), GENES)), "NaN or infinite"),
    ("every cell empty", _matrix_case(lambda c: (0 * c, GENES)), "no cell expresses any"),
    ("object dtype", _matrix_case(lambda c: (c.astype(object), GENES)), "non-numeric dtype"),
    ("text values", _matrix_case(lambda c: (c.astype(str), GENES)), "non-numeric dtype"),
    ("0 cells", _matrix_case(lambda c: (c[:0], GENES)), "is empty"),
    ("0 genes", _matrix_case(lambda c: (c[:, :0], [])), "is empty"),
    ("0 cells through the pipeline, explain=True", _pipeline_case(lambda c: (c[:0], GENES), explain=True),
     "expression is empty"),
    ("counts declared log-normalised",
     lambda ctx: ScInterpreterProcessor(gene_vocab=GENES, input_kind="log1p")(ctx["counts"] * 40, gene_names=GENES),
     "declared log-normalised"),
    ("log-normalised data declared counts",
     lambda ctx: ScInterpreterProcessor(gene_vocab=GENES, input_kind="counts")(np.log1p(ctx["counts"]),
                                                                              gene_names=GENES),
     "declared raw counts"),
    ("unknown AnnData layer", lambda ctx: ctx["processor"](ctx["adata"], layer="spliced"), "layer 'spliced' is not"),
    ("existing obs column without overwrite", lambda ctx: ctx["annotate"]()(ctx["adata_with_column"], copy=False),
     "overwrite=True"),
    ("label column missing", _train_case(lambda ctx: ["--dataset", str(ctx["h5ad"]), "--label_column", "celltype"]),
     "label column 'celltype' is not in adata.obs"),
    ("label column with one class",
     _train_case(lambda ctx: ["--dataset", str(_relabel(ctx["h5ad"], "cell_type", lambda a: "T"))]),
     "holds a single class"),
    ("test labels unseen in training",
     _train_case(lambda ctx: ["--dataset", str(ctx["h5ad"]), "--split_file", str(ctx["split_with_unseen"])]),
     "have no training cells"),
    ("labels of another length than the cells (training.fit)", _fit_case(lambda n: ["T"] * (n - 2)),
     "10 labels were given for 12 cells"),
    ("labels of one cell type (training.fit)", _fit_case(lambda n: ["T"] * n), "the labels hold a single cell type"),
    ("file that is not .h5ad", _train_case(lambda ctx: ["--dataset", str(ctx["not_h5ad"])]), "not an .h5ad file"),
    ("missing .h5ad file", _train_case(lambda ctx: ["--dataset", str(ctx["tmp"] / "nope.h5ad")]), "does not exist"),
    ("model folder without config", _load_case(lambda f: (f / "config.json").unlink()), "no config.json"),
    ("model folder that does not exist",
     lambda ctx: __import__("modeling_scinterpreter").ScInterpreterForCellAnnotation.from_pretrained(
         str(ctx["tmp"] / "no-such-model")), "does not exist: pass a saved model folder"),
    ("model folder with a pickle instead of safetensors",
     _load_case(lambda f: ((f / "model.safetensors").unlink(),
                           torch.save({"weight": torch.ones(1)}, f / "pytorch_model.bin"))),
     "only pickle files .*pytorch_model.bin.* no .safetensors"),
    ("damaged weights file",
     _load_case(lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:64])),
     "damaged or incomplete"),
    ("config whose gene table does not match the weights",
     _load_case(lambda f: (f / "config.json").write_text(
         (f / "config.json").read_text().replace('"gene_vocab_size": 45', '"gene_vocab_size": 50'))),
     "config and the weights come from different models"),
]


@pytest.fixture
def bad_input_context(tmp_path, processor, counts, adata, saved_tiny_model):
    import json

    from conftest import make_marker_dataset

    h5ad = make_marker_dataset(tmp_path / "cells.h5ad")
    import anndata

    cells = anndata.read_h5ad(h5ad)
    test = [name for name, label in zip(cells.obs_names, cells.obs["cell_type"]) if label == "beta"]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [n for n in cells.obs_names if n not in set(test)], "test": test}))
    not_h5ad = tmp_path / "cells.csv.h5ad"
    not_h5ad.write_text("cell,CD3E\nc1,3\n")
    with_column = adata.copy()
    with_column.obs["scinterpreter"] = "mine"
    return {
        "tmp": tmp_path, "processor": processor, "counts": counts, "adata": adata, "saved": saved_tiny_model,
        "h5ad": h5ad, "split_with_unseen": split, "not_h5ad": not_h5ad, "adata_with_column": with_column,
        "annotate": lambda: pipeline("cell-annotation", model=str(saved_tiny_model), trust_remote_code=True),
    }


@pytest.mark.parametrize("case, run, message", BAD_INPUTS, ids=[row[0] for row in BAD_INPUTS])
def test_bad_input_gets_our_error_naming_the_problem(case, run, message, bad_input_context):
    with pytest.raises(ValueError, match=message) as error:
        run(bad_input_context)
    # Our own error class: the one in configuration_scinterpreter, or the pipeline's remote-code copy of that module.
    error_class = type(error.value)
    assert error_class.__name__ == "ScInterpreterInputError", (case, error_class)
    assert error_class.__module__.rsplit(".", 1)[-1] == "configuration_scinterpreter", (case, error_class.__module__)
