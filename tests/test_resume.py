"""Killing train.py mid-epoch and resuming from its checkpoint ends exactly where an uninterrupted run ends."""

import json
import subprocess
import sys

import pytest
from conftest import REPO, make_marker_dataset, make_tiny_backbone
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # every test reads the module's three trainings

KILL_AT_STEP = 12  # 9 steps an epoch (72 cells / 8): step 12 is mid-way through epoch 2

KILLER = f"""
import os, signal, sys
sys.path.insert(0, {str(REPO)!r})
from transformers import TrainerCallback
import train

class KillAfterCheckpoint(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= {KILL_AT_STEP}:
            os.kill(os.getpid(), signal.SIGKILL)

train.main(sys.argv[1:], callbacks=[KillAfterCheckpoint()])
"""


def _arguments(data, backbone, output_dir):
    return ["--dataset", str(data), "--backbone", str(backbone), "--gene_encoder", "random", "--n_top_genes", "8",
            "--num_train_epochs", "4", "--per_device_train_batch_size", "8", "--save_strategy", "steps",
            "--save_steps", "6", "--output_dir", str(output_dir), "--annotate_test_cells", "false", "--seed", "3"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import train

    tmp = tmp_path_factory.mktemp("resume")
    backbone, data = make_tiny_backbone(tmp / "backbone"), make_marker_dataset(tmp / "cells.h5ad")
    reference = train.main(_arguments(data, backbone, tmp / "uninterrupted"))
    script = tmp / "kill.py"
    script.write_text(KILLER)
    killed = subprocess.run([sys.executable, str(script), *_arguments(data, backbone, tmp / "interrupted")],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    resumed = train.main(_arguments(data, backbone, tmp / "interrupted") + ["--resume_from_checkpoint", "True"])
    return tmp, reference, killed, resumed


def test_the_interrupted_run_was_killed_mid_training(runs):
    tmp, _, killed, _ = runs
    assert killed.returncode == -9, killed.stderr[-2000:]
    state = json.loads((tmp / "interrupted" / f"checkpoint-{KILL_AT_STEP}" / "trainer_state.json").read_text())
    assert state["global_step"] == KILL_AT_STEP and 1 < state["epoch"] < 2


def test_resumed_run_ends_with_bitwise_identical_weights_and_metrics(runs):
    tmp, reference, _, resumed = runs
    a = load_file(tmp / "uninterrupted" / "model.safetensors")
    b = load_file(tmp / "interrupted" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] == b[name]).all(), name
    assert resumed["test"] == reference["test"]


def test_checkpoints_hold_only_trained_weights_and_no_pickle(runs):
    tmp, *_ = runs
    checkpoint = tmp / "interrupted" / f"checkpoint-{KILL_AT_STEP}"
    weights = load_file(checkpoint / "model.safetensors")
    assert weights and all(name.startswith(("model.projector.", "model.class_token", "head.")) for name in weights)
    suffixes = {path.suffix for path in checkpoint.iterdir()}
    assert suffixes <= {".json", ".safetensors", ".py"}, suffixes
