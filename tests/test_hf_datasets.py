"""AnnData <-> datasets conversion, loading with load_dataset, and training from a dataset folder."""

import numpy as np
from conftest import make_marker_dataset, make_tiny_backbone
from datasets import ClassLabel, load_dataset

from scinterpreter.hf_datasets import anndata_to_dataset, dataset_to_anndata, load_cells, save_cells


def test_round_trip_keeps_values_labels_and_cell_names(tmp_path):
    import anndata

    adata = anndata.read_h5ad(make_marker_dataset(tmp_path / "cells.h5ad"))
    dataset = anndata_to_dataset(adata, label_column="cell_type")
    assert isinstance(dataset["cells"].features["label"], ClassLabel)
    assert dataset["cells"].features["label"].names == ["B cell", "T cell", "beta"]
    back = dataset_to_anndata(dataset)
    np.testing.assert_array_equal(back.X.toarray(), adata.X)
    assert list(back.obs_names) == list(adata.obs_names) and list(back.var_names) == list(adata.var_names)
    assert list(back.obs["cell_type"]) == list(adata.obs["cell_type"])


def test_saved_folder_loads_with_load_dataset_like_a_hub_repo(tmp_path):
    import anndata

    adata = anndata.read_h5ad(make_marker_dataset(tmp_path / "cells.h5ad"))
    folder = save_cells(anndata_to_dataset(adata, label_column="cell_type"), tmp_path / "cells_dataset")
    cells = load_dataset(str(folder), split="train")
    genes = load_dataset(str(folder), "gene_metadata", split="train")
    assert len(cells) == adata.n_obs and list(genes["gene_symbol"]) == list(adata.var_names)
    assert set(cells.column_names) >= {"genes", "expressions", "label"}
    assert dataset_to_anndata(load_cells(folder)).n_obs == adata.n_obs


def test_train_runs_two_steps_on_a_dataset_folder(tmp_path):
    import anndata

    import train

    adata = anndata.read_h5ad(make_marker_dataset(tmp_path / "cells.h5ad"))
    folder = save_cells(anndata_to_dataset(adata, label_column="cell_type"), tmp_path / "cells_dataset")
    results = train.main(["--dataset", str(folder), "--backbone", str(make_tiny_backbone(tmp_path / "backbone")),
                          "--gene_encoder", "random", "--n_top_genes", "8", "--max_steps", "2",
                          "--output_dir", str(tmp_path / "run"), "--annotate_test_cells", "false"])
    assert results["n_train_cells"] + results["n_validation_cells"] == 72
    assert set(results["test"]) >= {"accuracy", "macro_f1"}


def test_train_streams_a_dataset_folder_chunk_by_chunk(tmp_path):
    import train

    import anndata

    from scinterpreter.hf_datasets import anndata_to_dataset, save_cells

    adata = anndata.read_h5ad(make_marker_dataset(tmp_path / "cells.h5ad"))
    folder = save_cells(anndata_to_dataset(adata, label_column="cell_type"), tmp_path / "cells_dataset")
    results = train.main(["--dataset", str(folder), "--streaming", "true", "--backbone",
                          str(make_tiny_backbone(tmp_path / "backbone")), "--gene_encoder", "random",
                          "--n_top_genes", "8", "--num_train_epochs", "6", "--learning_rate", "3e-3",
                          "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path / "run"),
                          "--logging_steps", "50"])
    assert results["streaming"] and results["n_test_cells"] > 0
    assert results["n_test_cells"] + results["n_train_cells"] == 90  # every cell once, whatever the steps
    assert results["test"]["accuracy"] >= 0.9
    assert (tmp_path / "run" / "metrics.json").is_file() and (tmp_path / "run" / "model.safetensors").is_file()
