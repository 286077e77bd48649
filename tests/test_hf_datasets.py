"""AnnData <-> datasets conversion, loading with load_dataset, and training from a dataset folder."""

import numpy as np
import pytest
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.parametrize("world_size, accumulation, expected", [(1, 1, 3 * 13), (4, 1, 3 * 4), (2, 2, 3 * 4)])
def test_streamed_steps_count_the_cells_of_every_process(tmp_path, monkeypatch, world_size, accumulation, expected):
    from scinterpreter.train import streamed_max_steps
    from scinterpreter.training import ScInterpreterTrainingArguments

    # torchrun's world size, without torchrun: each of the processes takes its own batch of 8 cells per step.
    monkeypatch.setattr(ScInterpreterTrainingArguments, "world_size", property(lambda self: world_size))
    monkeypatch.setattr(ScInterpreterTrainingArguments, "n_gpu", property(lambda self: 1))  # one device per process
    args = ScInterpreterTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8,
                                          gradient_accumulation_steps=accumulation, num_train_epochs=3)
    assert args.world_size == world_size and args.train_batch_size == 8
    # 3 passes over 100 cells: 3 x ceil(100 / (8 cells x processes x accumulated batches)) steps.
    assert streamed_max_steps(100, args) == expected


TAHOE_CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/*.parquet
- config_name: gene_metadata
  data_files:
  - split: train
    path: metadata/gene_metadata.parquet
---
"""


def make_tahoe_like_folder(tmp_path):
    """The marker cells in Tahoe-100M's published layout: rows of `genes` token ids and `expressions` that start
    with the special `<cls>` token (expression -2), a plain string label `cell_line_id`, other metadata columns and
    no `cell_id`; a `gene_metadata` config whose special tokens have no Ensembl id."""
    import anndata
    import pyarrow as pa
    import pyarrow.parquet as pq

    adata = anndata.read_h5ad(make_marker_dataset(tmp_path / "cells.h5ad"))
    specials = ["<pad>", "<cls>"]
    genes = list(adata.var_names)
    counts = np.asarray(adata.X)
    rows = {"genes": [], "expressions": [], "cell_line_id": [], "drug": [], "plate": []}
    for i, label in enumerate(adata.obs["cell_type"]):
        expressed = np.flatnonzero(counts[i])
        rows["genes"].append([1] + (expressed + len(specials)).tolist())
        rows["expressions"].append([-2.0] + counts[i, expressed].tolist())
        rows["cell_line_id"].append(f"CVCL_{label.replace(' ', '_')}")
        rows["drug"].append("DMSO_TF" if i % 2 else "Bortezomib")
        rows["plate"].append(f"plate{i % 3}")
    folder = tmp_path / "tahoe_like"
    (folder / "data").mkdir(parents=True)
    (folder / "metadata").mkdir()
    pq.write_table(pa.table(rows), folder / "data" / "train-00000-of-00001.parquet")
    pq.write_table(pa.table({"token_id": list(range(len(specials) + len(genes))),
                             "ensembl_id": [None] * len(specials) + [f"ENSG{i:011d}" for i in range(len(genes))],
                             "gene_symbol": specials + genes}), folder / "metadata" / "gene_metadata.parquet")
    (folder / "README.md").write_text(TAHOE_CARD)
    return folder, adata


def test_tahoe_layout_loads_without_its_special_tokens(tmp_path):
    folder, adata = make_tahoe_like_folder(tmp_path)
    loaded = dataset_to_anndata(load_cells(folder))
    assert list(loaded.var_names) == list(adata.var_names)  # <pad> and <cls> are no genes
    np.testing.assert_array_equal(loaded.X.toarray(), adata.X)  # the -2 of <cls> is gone
    assert {"cell_line_id", "drug", "plate"} <= set(loaded.obs.columns) and loaded.n_obs == adata.n_obs
    assert loaded.var["ensembl_id"].iloc[0] == "ENSG00000000000"


@pytest.mark.slow
def test_train_on_the_tahoe_layout_in_memory_and_streamed(tmp_path):
    import train

    folder, _ = make_tahoe_like_folder(tmp_path)
    common = ["--dataset", str(folder), "--label_column", "cell_line_id", "--backbone",
              str(make_tiny_backbone(tmp_path / "backbone")), "--gene_encoder", "random", "--n_top_genes", "8"]
    in_memory = train.main(common + ["--max_steps", "2", "--output_dir", str(tmp_path / "run"),
                                     "--annotate_test_cells", "false", "--umap", "false"])
    assert in_memory["n_train_cells"] + in_memory["n_validation_cells"] + in_memory["n_test_cells"] == 90
    streamed = train.main(common + ["--streaming", "true", "--num_train_epochs", "6", "--learning_rate", "3e-3",
                                    "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path / "streamed"),
                                    "--logging_steps", "50"])
    assert streamed["n_test_cells"] + streamed["n_train_cells"] == 90  # cells named by a hash of their values
    assert streamed["test"]["accuracy"] >= 0.9
    assert sorted(streamed["per_class"]) == ["CVCL_B_cell", "CVCL_T_cell", "CVCL_beta"]


def test_streamed_cells_carry_a_panels_linear_list_at_one_width_across_chunks(tmp_path):
    import anndata
    import torch

    from processing_scinterpreter import ScInterpreterProcessor

    from scinterpreter.streaming import StreamingCells

    adata = anndata.read_h5ad(make_marker_dataset(tmp_path / "cells.h5ad"))
    folder = save_cells(anndata_to_dataset(adata, label_column="cell_type"), tmp_path / "cells_dataset")
    processor = ScInterpreterProcessor(gene_vocab=list(adata.var_names), n_top_genes=4, n_linear_genes=12,
                                       linear_gene_selection="variable").fit(adata)
    data = load_cells(folder, streaming=True)
    stream = StreamingCells(data["cells"], data["gene_metadata"], processor, keep=lambda key: True, chunk_size=7)
    items = list(stream)
    assert len(items) == adata.n_obs
    assert {item["linear_gene_ids"].shape[0] for item in items} == {len(processor.linear_gene_panel)}
    batch = torch.utils.data.default_collate(items[:16])  # spans chunks of different widths
    in_memory = processor(adata[:16])
    np.testing.assert_allclose(batch["linear_gene_values"].sum(1).numpy(),
                               in_memory["linear_gene_values"].sum(1).numpy(), rtol=1e-5)
