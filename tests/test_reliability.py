"""The user's data is never changed unless asked, and bad input stops early with a clear error."""

import numpy as np
import pytest
import torch
from conftest import GENES, tiny_config
from transformers import pipeline

from processing_scinterpreter import ScInterpreterProcessor
from scinterpreter.build import save_model_folder


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


def _fit_case(make_labels, recipe=None, **training_args):
    def run(ctx):
        from scinterpreter.training import Recipe, ScInterpreterTrainingArguments, fit

        # The labels and options are checked before the backbone is read, so none is needed.
        fit(ctx["counts"], make_labels(len(ctx["counts"])), Recipe(backbone=str(ctx["tmp"] / "no-backbone"),
                                                                   gene_encoder="random", **(recipe or {})),
            ScInterpreterTrainingArguments(output_dir=str(ctx["tmp"] / "fit"), **training_args), gene_names=GENES)
    return run


def _two_types(n):
    return ["T", "B"] * (n // 2)


def _construct_pipeline(**options):
    def run(ctx):
        pipeline("cell-annotation", model=str(ctx["saved"]), trust_remote_code=True, **options)
    return run


def _pipeline_with_config(ctx, **changes):
    import json

    config = json.loads((ctx["saved"] / "config.json").read_text())
    (ctx["saved"] / "config.json").write_text(json.dumps({**config, **changes}))
    return ctx["annotate"]()


def _annotated(ctx, **options):
    return ctx["annotate"]()(ctx["adata"], **options).adata


def _zoo_path(name):
    import scinterpreter.models as zoo

    return zoo.path(name)


def _saved_processor_with(ctx, **changes):
    import json

    folder = ctx["tmp"] / "processor"
    ctx["processor"].save_pretrained(folder)
    (saved,) = folder.glob("*processor_config.json")
    saved.write_text(json.dumps({**json.loads(saved.read_text()), **changes}))
    return ScInterpreterProcessor.from_pretrained(folder)


def _annotate_twice_into(ctx):
    from scinterpreter.annotate import annotate_h5ad

    out = ctx["tmp"] / "annotations"
    annotate_h5ad(ctx["genes_h5ad"], ctx["saved"], out, chunk_size=8, max_chunks=1)
    annotate_h5ad(ctx["genes_h5ad"], ctx["saved"], out, chunk_size=16)


def _resume_a_folder_of_an_older_format(ctx):
    import json

    from scinterpreter.annotate import CHUNK_FORMAT, annotate_h5ad

    out = ctx["tmp"] / "annotations"
    annotate_h5ad(ctx["genes_h5ad"], ctx["saved"], out, chunk_size=8, max_chunks=1)
    progress = out / "progress.json"
    progress.write_text(json.dumps({**json.loads(progress.read_text()), "format": CHUNK_FORMAT - 1}))
    annotate_h5ad(ctx["genes_h5ad"], ctx["saved"], out, chunk_size=8)  # the same run otherwise


def _fit_datasets_case(**training_args):
    def run(ctx):
        from scinterpreter.data import CellDataset
        from scinterpreter.training import Recipe, ScInterpreterTrainingArguments, fit_datasets

        # Checked before the model is touched, so none is needed.
        cells = CellDataset({"gene_ids": np.zeros((4, 3), dtype=np.int64), "gene_values": np.ones((4, 3), np.float32),
                             "gene_mask": np.ones((4, 3), dtype=bool)}, [0, 1, 0, 1])
        fit_datasets(None, None, cells, Recipe(), ScInterpreterTrainingArguments(output_dir=str(ctx["tmp"] / "fit"),
                                                                                 **training_args))
    return run


def _load_adapter_without_gene_table(ctx):
    from modeling_scinterpreter import ScInterpreterForCellAnnotation

    folder = ctx["adapter_folder"]
    ctx["monkeypatch"].setenv("SCINTERPRETER_CACHE", str(ctx["tmp"] / "empty-cache"))
    ScInterpreterForCellAnnotation.from_pretrained(folder)


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
    ("0 cells of an AnnData through the pipeline, explain=True",
     lambda ctx: ctx["annotate"]()(ctx["adata"][:0], explain=True), "expression is empty"),
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
    ("adapter-only folder whose gene table is not in the cache", _load_adapter_without_gene_table,
     "needs gene table"),
    ("unknown shipped model name", lambda ctx: _zoo_path("pbmc"), "no shipped model named 'pbmc'.*pbmc-human"),
    # Model and processor options.
    ("cell_pooling that is none of the known poolings", lambda ctx: tiny_config(cell_pooling="max"),
     "cell_pooling must be one of .*, not 'max'"),
    ("gene_dropout of 1", lambda ctx: tiny_config(gene_dropout=1.0), r"gene_dropout is a share .* in \[0, 1\)"),
    ("exclude_genes that is not a regular expression",
     lambda ctx: ScInterpreterProcessor(gene_vocab=GENES, exclude_genes="("),
     "exclude_genes must be a regular expression"),
    ("gene_selection='standardized' (removed)",
     lambda ctx: ScInterpreterProcessor(gene_vocab=GENES, gene_selection="standardized"),
     r"gene_selection must be one of \('expression', 'excess'\), got 'standardized'"),
    ("saved processor with gene_selection='standardized'",
     lambda ctx: _saved_processor_with(ctx, gene_selection="standardized"),
     r"gene_selection must be one of \('expression', 'excess'\), got 'standardized'"),
    ("gene_ranking='standardized' (the option's older name; removed)",
     lambda ctx: _saved_processor_with(ctx, gene_ranking="standardized"),
     r"gene_ranking='standardized' was removed: .*gene_selection, one of \('expression', 'excess'\)"),
    ("excess selection without a fitted reference",
     lambda ctx: ScInterpreterProcessor(gene_vocab=GENES, gene_selection="excess")(ctx["counts"], gene_names=GENES),
     r"call processor.fit\(training_cells\) first"),
    # Pipeline options, at construction and at the call.
    ("unknown option at construction (misspelt)", _construct_pipeline(treshold=0.5),
     r"unknown option 'treshold' \(did you mean 'threshold'\?\)"),
    ("unknown option at the call", lambda ctx: ctx["annotate"]()(ctx["counts"], gene_names=GENES, topk=5),
     "unknown option 'topk'.*takes gene_names, layer"),
    ("threshold out of [0, 1] at construction", _construct_pipeline(threshold=1.5), "threshold must be a probability"),
    ("negative explain at construction", _construct_pipeline(explain=-1), "explain must be"),
    ("negative explain at the call", lambda ctx: ctx["annotate"]()(ctx["counts"], gene_names=GENES, explain=-2),
     "explain must be"),
    *[(f"threshold={threshold!r} at the call",
       lambda ctx, threshold=threshold: ctx["annotate"]()(ctx["counts"], gene_names=GENES, threshold=threshold),
       "threshold must be a probability between 0 and 1 or 'auto'") for threshold in ("high", -0.1, 1.5, True)],
    ("threshold='auto' without a fitted Unassigned threshold",
     lambda ctx: ctx["annotate"]()(ctx["counts"], gene_names=GENES, threshold="auto"),
     "threshold='auto' needs the Unassigned threshold"),
    ("unassigned_score='centroid_distance' on a model that stores no centroids",
     lambda ctx: _pipeline_with_config(ctx, unassigned_score="centroid_distance", unassigned_threshold=0.5)(
         ctx["counts"], gene_names=GENES, threshold="auto"),
     "needs the cell types' centroids, and this model holds none"),
    ("AnnData annotated before under the same key_added (copy=True)",
     lambda ctx: ctx["annotate"]()(_annotated(ctx, key_added="again"), key_added="again"), "another key_added"),
    ("existing majority-voting column without overwrite",
     lambda ctx: ctx["annotate"]()(ctx["adata_with_vote"], copy=False, majority_voting=True,
                                   over_clustering="cell_type"),
     r"already has obs\['scinterpreter_majority_voting'\]: pass overwrite=True"),
    ("over_clustering that is not an obs column",
     lambda ctx: ctx["annotate"]()(ctx["adata"], majority_voting=True, over_clustering="leiden"), "not an obs column"),
    ("over_clustering of another length than the cells",
     lambda ctx: ctx["annotate"]()(ctx["adata"], majority_voting=True, over_clustering=[0, 1]),
     "one cluster id per cell"),
    ("refit_reference=True on a model that chooses genes by expression",
     lambda ctx: ctx["annotate"]()(ctx["counts"], gene_names=GENES, refit_reference=True),
     "leave refit_reference out"),
    ("refit_reference=True on too few cells",
     lambda ctx: ctx["annotate_excess"](ctx["counts"], gene_names=GENES, refit_reference=True),
     "12 cells are too few"),
    ("driver genes of an AnnData annotated without explain",
     lambda ctx: __import__("scinterpreter.explain").explain.driver_genes(_annotated(ctx)), "explain=True"),
    # scinterpreter.annotate (.h5ad files in chunks).
    ("unknown layer of an .h5ad file (scinterpreter.annotate)",
     lambda ctx: __import__("scinterpreter.annotate").annotate.annotate_h5ad(
         ctx["h5ad"], ctx["saved"], ctx["tmp"] / "out", layer="spliced"),
     r"layer 'spliced' is not in .*layers: \[\]"),
    ("--out folder holding another run's results", _annotate_twice_into, "results of another run"),
    ("--out folder written by an older version (chunk format)", _resume_a_folder_of_an_older_format,
     r"written by an older scInterpreter \(chunk format \d+, this version writes \d+\)"),
    ("--write_h5ad of a file annotated before under the same key",
     lambda ctx: __import__("scinterpreter.annotate").annotate.main(
         [str(ctx["annotated_h5ad"]), "--model", str(ctx["saved"]), "--out", str(ctx["tmp"] / "out"),
          "--write_h5ad", str(ctx["tmp"] / "again.h5ad")]),
     "already has .*another --key_added"),
    # Training options.
    ("unknown unassigned_score (training.fit)", _fit_case(_two_types, recipe={"unassigned_score": "distance"}),
     "unassigned_score must be one of"),
    ("evaluation flags without validation cells (training.fit)",
     _fit_case(_two_types, recipe={"validation_fraction": 0.0}, eval_strategy="epoch"), "need validation cells"),
    ("evaluation flags without validation cells (training.fit_datasets)",
     _fit_datasets_case(load_best_model_at_end=True, eval_strategy="epoch", save_strategy="epoch"),
     "need validation cells"),
    # Before the stream is opened: the missing label column, which only the stream's columns show, is not reached.
    ("evaluation flags in streamed training",
     _train_case(lambda ctx: ["--dataset", str(ctx["tahoe_like"]), "--streaming", "true", "--eval_strategy", "epoch"]),
     "need validation cells"),
    ("class_balance above 1",
     lambda ctx: __import__("scinterpreter.training").training.balanced_sample_weights(np.array([0] * 9 + [1]), 2.0),
     "class_balance must be between 0 and 1"),
    ("streamed dataset without the label column",
     _train_case(lambda ctx: ["--dataset", str(ctx["tahoe_like"]), "--streaming", "true"]),
     "no label column 'label'.*cell_line_id"),
]


class _Context(dict):
    """What the bad-input cases run on, each entry made the first time a case reads it (a case needs one or two)."""

    def __init__(self, makers):
        super().__init__()
        self.makers = makers

    def __missing__(self, key):
        self[key] = value = self.makers[key](self)
        return value


def _split_with_unseen_test_labels(ctx):
    import json

    import anndata

    cells = anndata.read_h5ad(ctx["h5ad"])
    test = [name for name, label in zip(cells.obs_names, cells.obs["cell_type"]) if label == "beta"]
    split = ctx["tmp"] / "split.json"
    split.write_text(json.dumps({"train": [n for n in cells.obs_names if n not in set(test)], "test": test}))
    return split


def _with_obs_column(ctx, column):
    adata = ctx["adata"].copy()
    adata.obs[column] = "mine"
    return adata


def _written(adata, path):
    adata.write_h5ad(path)
    return path


def _not_h5ad(ctx):
    path = ctx["tmp"] / "cells.csv.h5ad"
    path.write_text("cell,CD3E\nc1,3\n")
    return path


def _excess_pipeline(ctx):
    """A pipeline whose processor chooses genes by their excess over a reference fitted on other cells."""
    from conftest import make_counts

    fitted = ScInterpreterProcessor(gene_vocab=GENES, n_top_genes=8, gene_selection="excess")
    fitted.fit(make_counts(60, seed=1), gene_names=GENES)
    folder = save_model_folder(ctx["tiny_model"], fitted, ctx["tmp"] / "excess-model")
    return pipeline("cell-annotation", model=str(folder), trust_remote_code=True)


def _adapter_folder(ctx):
    """An adapter-only folder of a tiny model, whose gene table is in the cache it was built with."""
    from conftest import make_tiny_backbone

    from scinterpreter.build import build_model
    from scinterpreter.genes import build_gene_table, load_gene_descriptions

    ctx["monkeypatch"].setenv("SCINTERPRETER_CACHE", str(ctx["tmp"] / "cache"))
    table = build_gene_table(load_gene_descriptions().head(300), encoder="random")
    model, processor = build_model(["a", "b", "c"], backbone=str(make_tiny_backbone(ctx["tmp"] / "backbone")),
                                   gene_table=table, n_top_genes=8, backbone_dtype=torch.float32)
    return save_model_folder(model, processor, ctx["tmp"] / "adapter", adapter_only=True)


def _tahoe_like(ctx):
    from test_hf_datasets import make_tahoe_like_folder

    (ctx["tmp"] / "tahoe").mkdir()
    return make_tahoe_like_folder(ctx["tmp"] / "tahoe")[0]


@pytest.fixture
def bad_input_context(request, tmp_path, monkeypatch):
    from conftest import make_marker_dataset

    fixture = request.getfixturevalue
    return _Context({
        "tmp": lambda ctx: tmp_path, "monkeypatch": lambda ctx: monkeypatch,
        "processor": lambda ctx: fixture("processor"), "counts": lambda ctx: fixture("counts"),
        "adata": lambda ctx: fixture("adata"), "tiny_model": lambda ctx: fixture("tiny_model"),
        "saved": lambda ctx: fixture("saved_tiny_model"),
        "annotate": lambda ctx: lambda: pipeline("cell-annotation", model=str(ctx["saved"]), trust_remote_code=True),
        "annotate_excess": _excess_pipeline,
        "h5ad": lambda ctx: make_marker_dataset(tmp_path / "cells.h5ad"),
        "genes_h5ad": lambda ctx: _written(ctx["adata"], tmp_path / "genes.h5ad"),
        "annotated_h5ad": lambda ctx: _written(_annotated(ctx), tmp_path / "annotated.h5ad"),
        "split_with_unseen": _split_with_unseen_test_labels, "not_h5ad": _not_h5ad,
        "adata_with_column": lambda ctx: _with_obs_column(ctx, "scinterpreter"),
        "adata_with_vote": lambda ctx: _with_obs_column(ctx, "scinterpreter_majority_voting"),
        "adapter_folder": _adapter_folder, "tahoe_like": _tahoe_like,
    })


@pytest.mark.parametrize("case, run, message", BAD_INPUTS, ids=[row[0] for row in BAD_INPUTS])
def test_bad_input_gets_our_error_naming_the_problem(case, run, message, bad_input_context):
    with pytest.raises(ValueError, match=message) as error:
        run(bad_input_context)
    # Our own error class: the one in configuration_scinterpreter, or the pipeline's remote-code copy of that module.
    error_class = type(error.value)
    assert error_class.__name__ == "ScInterpreterInputError", (case, error_class)
    assert error_class.__module__.rsplit(".", 1)[-1] == "configuration_scinterpreter", (case, error_class.__module__)
