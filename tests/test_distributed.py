"""Training across processes: `torchrun` of train.py with the gloo backend, 2 CPU processes, tiny model."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, make_marker_dataset, make_tiny_backbone
from safetensors import safe_open
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def test_two_process_gloo_training_ends_with_identical_weights_on_both_ranks(tmp_path):
    backbone, data = make_tiny_backbone(tmp_path / "backbone"), make_marker_dataset(tmp_path / "cells.h5ad")
    env = {**os.environ, "SCINTERPRETER_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
        str(REPO / "tests" / "ddp_worker.py"), str(tmp_path),
        "--dataset", str(data), "--backbone", str(backbone), "--gene_encoder", "random", "--n_top_genes", "8",
        "--num_train_epochs", "2", "--per_device_train_batch_size", "8", "--ddp_backend", "gloo", "--use_cpu", "true",
        "--output_dir", str(tmp_path / "run"), "--annotate_test_cells", "false", "--umap", "false",
        "--logging_steps", "50",
    ]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    with safe_open(tmp_path / "rank0.safetensors", framework="pt") as handle:
        assert handle.metadata()["world_size"] == "2"
        steps = int(handle.metadata()["steps"])
    # 72 training cells, 8 per process and step, 2 processes: 5 steps an epoch (the last one short).
    assert steps == 10
    assert rank0.keys() == rank1.keys() and rank0
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    assert (tmp_path / "run" / "model.safetensors").is_file()
