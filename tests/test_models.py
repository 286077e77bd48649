"""The models shipped in the package (`scinterpreter.models`): listed, small, loadable as remote code, and as good
on the cells they never saw as their cards say."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import shared_file
from test_remote_code import ONLY_TORCH_TRANSFORMERS_SAFETENSORS, make_minimal_site

import scinterpreter.models as zoo

SHIPPED = ["pancreas-human", "pancreas-mouse", "pbmc-human"]


def test_the_three_models_are_listed_with_their_test_figures():
    assert zoo.names() == sorted(SHIPPED)
    table = zoo.list()
    assert list(table.index) == sorted(SHIPPED)
    for name in SHIPPED:
        metrics = json.loads((zoo.ZOO / name / "metrics.json").read_text())
        assert table.loc[name, "test_macro_f1"] == metrics["test"]["macro_f1"]
        assert table.loc[name, "test_cells"] == metrics["n_test_cells"] == len(zoo.held_out_cells(name))
        assert table.loc[name, "species"] in ("human", "mouse")


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_folder_is_adapter_only_safetensors_and_json(name):
    folder = zoo.ZOO / name
    files = {path.name for path in folder.iterdir()}
    assert files == set(zoo.MODEL_FILES) | {"held_out_cells.json"}
    config = json.loads((folder / "config.json").read_text())
    assert config["adapter_only"] and config["backbone_fingerprint"] and config["calibration_temperature"]
    # Only the trained weights and the fitted linear gene scores (the full model would be ~150 MB).
    assert (folder / "model.safetensors").stat().st_size < 10e6
    # Its held-out cells were neither trained on nor used for validation.
    assert json.loads((folder / "metrics.json").read_text())["split_file"].endswith(".json")


def test_path_adds_the_installed_code_and_reuses_its_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SCINTERPRETER_CACHE", str(tmp_path))
    folder = zoo.path("pbmc-human", prepare=False)
    assert folder.startswith(str(tmp_path))
    for module in zoo.CODE_MODULES:
        installed = __import__(module).__file__
        assert open(os.path.join(folder, f"{module}.py")).read() == open(installed).read()
    assert zoo.path("scinterpreter/pbmc-human", prepare=False) == folder


LOADER = ONLY_TORCH_TRANSFORMERS_SAFETENSORS + """
import json, sys
import numpy as np
from transformers import AutoModel, pipeline
folder, matrix, genes = sys.argv[1], np.load(sys.argv[2]), json.load(open(sys.argv[3]))
model = AutoModel.from_pretrained(folder, trust_remote_code=True)
annotate = pipeline("cell-annotation", model=folder, trust_remote_code=True)
print(json.dumps({"class": type(model).__name__, "labels": [r["label"] for r in annotate(matrix, gene_names=genes)]}))
"""


DATASETS = {"pancreas-human": "baron_human_pancreas", "pancreas-mouse": "baron_mouse_pancreas",
            "pbmc-human": "pbmc3k_clustifyr"}


@pytest.mark.integration
@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_model_annotates_its_held_out_cells_as_its_card_says_in_a_bare_environment(tmp_path, name):
    """With only torch, transformers and safetensors importable (plus the cached backbone and gene table), the
    shipped model loads through AutoModel and the pipeline and reproduces its card's test accuracy on the cells it
    never saw."""
    import anndata
    from scipy import sparse

    adata = anndata.read_h5ad(shared_file("scrna", f"{DATASETS[name]}.h5ad"))
    adata = adata[zoo.held_out_cells(name)]
    matrix = adata.X.toarray() if sparse.issparse(adata.X) else np.asarray(adata.X)
    np.save(tmp_path / "cells.npy", matrix.astype(np.float32))
    (tmp_path / "genes.json").write_text(json.dumps(list(adata.var_names)))
    (tmp_path / "load.py").write_text(LOADER)
    folder = zoo.path(name)  # converts the backbone and embeds the gene table if not cached yet
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env.update(PYTHONPATH=str(make_minimal_site(tmp_path / "site")), HF_HUB_OFFLINE="1",
               HF_MODULES_CACHE=str(tmp_path / "modules"))
    run = subprocess.run([sys.executable, "-S", "load.py", folder, "cells.npy", "genes.json"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert loaded["class"] == "ScInterpreterForCellAnnotation"
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    accuracy = float(np.mean(np.array(loaded["labels"]) == truth))
    card = json.loads((zoo.ZOO / name / "metrics.json").read_text())["test"]["accuracy"]
    # The card was measured in the backbone dtype of the training machine; bf16 and fp32 may flip a cell or two.
    assert abs(accuracy - card) <= 0.015, (accuracy, card)


def test_path_rebuilds_the_processor_vocabulary_that_the_model_indexes(tmp_path, monkeypatch):
    monkeypatch.setenv("SCINTERPRETER_CACHE", str(tmp_path))
    folder = zoo.path("pancreas-mouse", prepare=False)
    processor = json.loads(open(os.path.join(folder, "preprocessor_config.json")).read())
    config = json.loads((zoo.ZOO / "pancreas-mouse" / "config.json").read_text())
    assert len(processor["gene_vocab"]) == config["gene_vocab_size"]
    assert processor["reference_means"] and processor["ortholog_map"]["Ins1"] == "INS"
