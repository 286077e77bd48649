"""A saved model folder loads as Hub remote code where only torch, transformers and safetensors are installed."""

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import GENES

from scinterpreter.safety import REMOTE_CODE_FILES, REPO

REQUIRED = ["torch", "transformers", "safetensors"]

# The first lines of every loader script: it fails unless the environment really is bare.
ONLY_TORCH_TRANSFORMERS_SAFETENSORS = """
for blocked in ("anndata", "pandas", "scipy", "sklearn", "scinterpreter", "modeling_scinterpreter"):
    try:
        __import__(blocked)
        raise SystemExit(f"{blocked} should not be importable here")
    except ImportError:
        pass
"""

LOADER = ONLY_TORCH_TRANSFORMERS_SAFETENSORS + """
import json, sys
import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoProcessor, pipeline
folder, cells = sys.argv[1], json.load(open(sys.argv[2]))
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
model = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
inputs = processor(np.array(cells["counts"], dtype=np.float32), gene_names=cells["genes"])
with torch.no_grad():
    out = model(**inputs)
annotate = pipeline("cell-annotation", model=folder, trust_remote_code=True)
results = annotate(np.array(cells["counts"], dtype=np.float32), gene_names=cells["genes"])
print(json.dumps({"model_type": config.model_type, "class": type(model).__name__,
                  "logits": out.logits.tolist(), "embeddings": out.cell_embeddings.tolist(),
                  "labels": [r["label"] for r in results]}))
"""


def _requirement_closure(names):
    """The installed distributions that `names` need, transitively (extras left out)."""
    seen, todo = {}, list(names)
    while todo:
        name = re.split(r"[ ;<>=!~\[(]", todo.pop())[0].lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[name] = dist
        todo += [r for r in (dist.requires or []) if "extra ==" not in r]
    return seen.values()


def make_minimal_site(target: Path) -> Path:
    """A folder holding links to only torch, transformers, safetensors and what they need: an environment
    in which nothing else (anndata, pandas, scipy, scikit-learn, this repo) can be imported."""
    target.mkdir()
    for dist in _requirement_closure(REQUIRED):
        for file in dist.files or []:
            top = file.parts[0]
            source = Path(dist.locate_file(top))
            link = target / top
            if top.endswith(".pth") or top == ".." or link.exists() or not source.exists():
                continue
            link.symlink_to(source)
    return target


@pytest.mark.slow
def test_saved_folder_loads_with_only_torch_transformers_safetensors(tmp_path, saved_tiny_model, tiny_model,
                                                                     processor, counts):
    site = make_minimal_site(tmp_path / "site")
    cells = tmp_path / "cells.json"
    cells.write_text(json.dumps({"counts": counts.tolist(), "genes": GENES}))
    script = tmp_path / "load.py"
    script.write_text(LOADER)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env.update(PYTHONPATH=str(site), HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    run = subprocess.run([sys.executable, "-S", str(script), str(saved_tiny_model), str(cells)],
                         cwd=outside, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert loaded["model_type"] == "scinterpreter" and loaded["class"] == "ScInterpreterForCellAnnotation"
    with torch.no_grad():
        expected = tiny_model(**processor(counts, gene_names=GENES))
    np.testing.assert_allclose(loaded["logits"], expected.logits.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(loaded["embeddings"], expected.cell_embeddings.numpy(), atol=1e-5, rtol=1e-5)
    assert loaded["labels"] == [tiny_model.config.id2label[i] for i in expected.logits.argmax(-1).tolist()]


def test_saved_folder_holds_code_auto_map_and_only_safetensors_and_json(saved_tiny_model):
    files = {path.name for path in saved_tiny_model.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", *REMOTE_CODE_FILES} <= files
    assert all(name.endswith((".json", ".safetensors", ".py")) for name in files), files
    config = json.loads((saved_tiny_model / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_scinterpreter.ScInterpreterForCellAnnotation"
    assert config["custom_pipelines"]["cell-annotation"]["impl"] == "pipeline_scinterpreter.CellAnnotationPipeline"
    processor_config = json.loads((saved_tiny_model / "preprocessor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_scinterpreter.ScInterpreterProcessor"


def test_every_top_level_scinterpreter_file_is_a_remote_code_file():
    assert sorted(path.name for path in REPO.glob("*_scinterpreter.py")) == sorted(REMOTE_CODE_FILES)


def test_pyproject_installs_every_remote_code_file():
    tomllib = pytest.importorskip("tomllib")
    modules = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["py-modules"]
    assert sorted(modules) == sorted(name.removesuffix(".py") for name in REMOTE_CODE_FILES)
