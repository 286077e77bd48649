import json

import numpy as np
import pytest
import torch
from conftest import shared_file
from transformers import AutoModel, LlamaConfig, LlamaModel, PreTrainedTokenizerFast

import train

WORDS = "what is the cell type of this given embedding ?".split()


def make_tiny_backbone(folder):
    """A random 2-layer Llama with a word-level tokenizer: a stand-in backbone for fast tests."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {word: i for i, word in enumerate(["[UNK]", *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(vocab), max_position_embeddings=256)
    LlamaModel(config).save_pretrained(folder)
    return folder


def make_marker_dataset(path, n_per_class=30, seed=0):
    """Three cell types, each with its own highly expressed marker genes, as raw counts."""
    import anndata
    import pandas as pd

    rng = np.random.default_rng(seed)
    markers = {"T cell": ["CD3E", "CD3D", "CD2", "IL7R"], "B cell": ["CD19", "MS4A1", "CD79A", "CD79B"],
               "beta": ["INS", "IAPP", "PCSK1", "NKX6-1"]}
    background = ["ACTB", "GAPDH", "B2M", "MALAT1", "RPL13", "RPS27", "TMSB4X", "EEF1A1", "FTL", "TPT1"]
    genes = [g for names in markers.values() for g in names] + background + ["not-a-gene-1", "not-a-gene-2"]
    counts, labels = [], []
    for label, names in markers.items():
        block = rng.poisson(2.0, size=(n_per_class, len(genes)))
        block[:, [genes.index(g) for g in names]] += rng.poisson(30, size=(n_per_class, len(names)))
        counts.append(block)
        labels += [label] * n_per_class
    obs = pd.DataFrame({"cell_type": labels}, index=[f"c{i}" for i in range(len(labels))])
    adata = anndata.AnnData(np.concatenate(counts).astype(np.float32), obs=obs, var=pd.DataFrame(index=genes))
    adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    backbone = make_tiny_backbone(tmp / "backbone")
    data = make_marker_dataset(tmp / "cells.h5ad")
    out = tmp / "run"
    results = train.main([
        "--dataset", str(data), "--backbone", str(backbone), "--num_backbone_layers", "0",
        "--gene_encoder", "random", "--n_top_genes", "8", "--num_train_epochs", "8", "--learning_rate", "3e-3",
        "--per_device_train_batch_size", "8", "--output_dir", str(out), "--logging_steps", "50",
    ])
    return out, results


def test_train_writes_metrics_plot_and_a_loadable_model_folder(tiny_run):
    out, results = tiny_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) == {"accuracy", "macro_precision", "macro_recall", "macro_f1"}
    assert metrics["n_test_cells"] == 18 and metrics["n_train_cells"] == 72
    assert (out / "confusion_matrix.png").stat().st_size > 0
    model = AutoModel.from_pretrained(out, trust_remote_code=True)
    assert sorted(model.config.id2label.values()) == ["B cell", "T cell", "beta"]


def test_train_learns_marker_genes(tiny_run):
    _, results = tiny_run
    assert results["test"]["accuracy"] >= 0.9
    assert results["pipeline_test_accuracy"] == pytest.approx(results["test"]["accuracy"], abs=1e-6)


def test_train_writes_no_pickle(tiny_run):
    out, _ = tiny_run
    suffixes = {path.suffix for path in out.rglob("*") if path.is_file()}
    assert suffixes <= {".json", ".safetensors", ".py", ".png"}, suffixes


def test_unknown_label_column_is_a_clear_error(tmp_path):
    from processing_scinterpreter import ScInterpreterInputError

    data = make_marker_dataset(tmp_path / "cells.h5ad")
    with pytest.raises(ScInterpreterInputError, match="label column 'celltype' is not in adata.obs"):
        train.main(["--dataset", str(data), "--label_column", "celltype", "--output_dir", str(tmp_path / "o")])


def test_a_file_that_is_not_h5ad_is_a_clear_error(tmp_path):
    from processing_scinterpreter import ScInterpreterInputError

    bogus = tmp_path / "cells.h5ad"
    bogus.write_text("gene,cell\n")
    with pytest.raises(ScInterpreterInputError, match="not an .h5ad file"):
        train.main(["--dataset", str(bogus), "--output_dir", str(tmp_path / "o")])


@pytest.mark.integration
def test_real_smollm2_backbone_learns_baron_human_pancreas(tmp_path):
    """Two layers of the real SmolLM2, one epoch on the real Baron split: far above the majority class (.29)."""
    data = shared_file("scrna", "baron_human_pancreas.h5ad")
    split = shared_file("scrna", "splits", "baron_human_pancreas.json")
    results = train.main([
        "--dataset", str(data), "--split_file", str(split), "--num_backbone_layers", "2", "--n_top_genes", "32",
        "--num_train_epochs", "1", "--output_dir", str(tmp_path / "run"), "--annotate_test_cells", "false",
    ])
    assert results["test"]["accuracy"] > 0.8
    assert results["n_test_cells"] == 429
