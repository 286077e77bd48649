"""The user's data is never changed unless asked, and bad input stops early with a clear error."""

import numpy as np
import pytest
from conftest import GENES
from transformers import pipeline

from processing_scinterpreter import ScInterpreterInputError, ScInterpreterProcessor


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


def test_declared_log_normalised_data_that_holds_counts_is_an_error(counts):
    processor = ScInterpreterProcessor(gene_vocab=GENES, input_kind="log1p")
    with pytest.raises(ScInterpreterInputError, match="declared log-normalised"):
        processor(counts * 40, gene_names=GENES)


def test_declared_counts_that_are_not_integers_is_an_error(counts):
    processor = ScInterpreterProcessor(gene_vocab=GENES, input_kind="counts")
    with pytest.raises(ScInterpreterInputError, match="declared raw counts"):
        processor(np.log1p(counts), gene_names=GENES)


def test_all_cells_empty_is_an_error(processor, counts):
    with pytest.raises(ScInterpreterInputError, match="no cell expresses any"):
        processor(np.zeros_like(counts), gene_names=GENES)


def test_duplicated_gene_names_are_summed_with_a_warning(processor, counts, caplog):
    names = list(GENES)
    names[1] = names[0]
    with caplog.at_level("WARNING"):
        processor(counts, gene_names=names)
    assert "appear more than once" in caplog.text and GENES[0] in caplog.text
