"""Adapter-only model folders: only the trained weights are written; the backbone and gene table load again."""

import warnings

import pytest
import torch
from conftest import make_marker_dataset, make_tiny_backbone
from safetensors import safe_open
from transformers import AutoModel

import train
from modeling_scinterpreter import cell_embedding_size
from scinterpreter.build import build_model, save_model_folder
from scinterpreter.genes import build_gene_table, load_gene_descriptions


@pytest.fixture(params=[0, 4], ids=["no_lora", "lora"])
def built(tmp_path, monkeypatch, request):
    monkeypatch.setenv("SCINTERPRETER_CACHE", str(tmp_path / "cache"))
    backbone = make_tiny_backbone(tmp_path / "backbone")
    table = build_gene_table(load_gene_descriptions().head(300), encoder="random")
    model, processor = build_model(["a", "b", "c"], backbone=str(backbone), gene_table=table, n_top_genes=8,
                                   backbone_dtype=torch.float32, lora_rank=request.param)
    torch.manual_seed(1)
    with torch.no_grad():  # stand-in for training: every trained tensor moves away from its initial value
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.eval(), processor, tmp_path


def _logits(model, n_genes=300):
    torch.manual_seed(2)
    gene_ids = torch.randint(0, n_genes, (5, 8))
    with torch.no_grad():
        return model(gene_ids, torch.rand(5, 8) * 3).logits


def test_adapter_folder_holds_only_trained_weights_and_reloads_to_identical_logits(built):
    model, processor, tmp_path = built
    folder = save_model_folder(model, processor, tmp_path / "adapter", adapter_only=True)
    with safe_open(folder / "model.safetensors", framework="pt") as handle:
        keys = set(handle.keys())
    trained = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    fitted = {"gene_score_genes", "gene_score_weights", "gene_score_bias"} if model.config.linear_gene_scores else set()
    assert keys == trained | fitted
    assert all(name.split(".")[1] in ("projector", "class_token") or name.startswith("head.")
               or name.endswith((".lora_A", ".lora_B")) for name in keys - fitted)
    assert any(".lora_" in name for name in keys) == bool(model.config.lora_rank)
    assert (folder / "model.safetensors").stat().st_size < 10 * 2**20

    reloaded = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert reloaded.config.adapter_only
    torch.testing.assert_close(_logits(reloaded), _logits(model), rtol=0, atol=1e-6)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, rtol=0, atol=0, msg=name)


def test_adapter_folder_carries_the_cell_type_centroids(built):
    model, processor, tmp_path = built
    model.set_cell_type_centroids(torch.randn(12, cell_embedding_size(model.config)), torch.arange(12) % 3)
    folder = save_model_folder(model, processor, tmp_path / "adapter", adapter_only=True)
    with safe_open(folder / "model.safetensors", framework="pt") as handle:
        assert "cell_type_centroids" in handle.keys()
    reloaded = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert reloaded.config.cell_type_centroids
    torch.testing.assert_close(reloaded.cell_type_centroids, model.cell_type_centroids, rtol=0, atol=0)


@pytest.mark.slow
def test_train_adapter_only_run_annotates_with_the_reloaded_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SCINTERPRETER_CACHE", str(tmp_path / "cache"))
    backbone = make_tiny_backbone(tmp_path / "backbone")
    data = make_marker_dataset(tmp_path / "cells.h5ad")
    results = train.main([
        "--dataset", str(data), "--backbone", str(backbone), "--gene_encoder", "random", "--n_top_genes", "8",
        "--num_train_epochs", "8", "--learning_rate", "3e-3", "--per_device_train_batch_size", "8",
        "--output_dir", str(tmp_path / "run"), "--adapter_only", "true", "--logging_steps", "50",
    ])
    assert (tmp_path / "run" / "model.safetensors").stat().st_size < 10 * 2**20
    assert results["pipeline_test_accuracy"] == pytest.approx(results["test"]["accuracy"], abs=1e-6)


def test_adapter_warns_when_given_other_backbone_weights_than_it_was_trained_on(built):
    from safetensors.torch import load_file, save_file

    model, processor, tmp_path = built
    assert model.config.backbone_fingerprint
    folder = save_model_folder(model, processor, tmp_path / "adapter", adapter_only=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert not [w for w in caught if "trained on" in str(w.message)]  # the right backbone loads without one
    weights_file = tmp_path / "backbone" / "model.safetensors"
    weights = load_file(weights_file)
    name = next(key for key in weights if key.endswith("q_proj.weight"))
    weights[name] = weights[name] + 0.01  # e.g. the original SmolLM2 instead of the dequantised GGUF weights
    save_file(weights, weights_file, metadata={"format": "pt"})
    with pytest.warns(UserWarning, match="not the one this adapter was trained on"):
        AutoModel.from_pretrained(folder, trust_remote_code=True)


def test_adapter_folder_carries_the_linear_gene_scores(tmp_path, monkeypatch):
    monkeypatch.setenv("SCINTERPRETER_CACHE", str(tmp_path / "cache"))
    backbone = make_tiny_backbone(tmp_path / "backbone")
    table = build_gene_table(load_gene_descriptions().head(300), encoder="random")
    model, processor = build_model(["a", "b", "c"], backbone=str(backbone), gene_table=table, n_top_genes=8,
                                   backbone_dtype=torch.float32, linear_gene_scores=True)
    model.set_linear_gene_scores(torch.randn(model.config.gene_vocab_size, 3), torch.randn(3))
    folder = save_model_folder(model.eval(), processor, tmp_path / "adapter", adapter_only=True)
    with safe_open(folder / "model.safetensors", framework="pt") as handle:
        assert {"gene_score_weights", "gene_score_bias"} <= set(handle.keys())
    reloaded = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    torch.testing.assert_close(_logits(reloaded), _logits(model), rtol=0, atol=1e-6)
