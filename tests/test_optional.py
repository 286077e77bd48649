"""The core install annotates; each optional dependency is asked for, by its extra, where it is used."""

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import GENES, REPO

from scinterpreter.optional import EXTRAS, PIP_NAMES, require


def test_a_missing_module_is_named_with_the_extra_to_install(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "sklearn" else real_find_spec(name, *args))
    message = r"^plot_confusion_matrix needs scikit-learn: pip install 'scinterpreter\[plots\]'$"
    with pytest.raises(ImportError, match=message):
        require("plots", "plot_confusion_matrix", "matplotlib", "sklearn")
    require("plots", "save_figure", "matplotlib")  # installed: no error


def test_the_extras_in_pyproject_bring_the_modules_the_code_asks_for():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    import_names = {pip: module for module, pip in PIP_NAMES.items()}

    def modules(requirements):
        names = set()
        for requirement in requirements:
            name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()
            if name == "scinterpreter":  # scinterpreter[a,b]: the modules of those extras
                for extra in re.search(r"\[(.*)\]", requirement).group(1).split(","):
                    names |= modules(extras[extra])
            else:
                names.add(import_names.get(name, name))
        return names

    for extra, wanted in EXTRAS.items():
        assert modules(extras[extra]) == set(wanted), extra
    optional = {module for wanted in EXTRAS.values() for module in wanted}
    assert modules(extras["all"]) == optional
    # The README's commands install `test`: pytest and every extra but the alternative MiniLM encoder.
    assert modules(extras["test"]) == optional - set(EXTRAS["minilm"]) | {"pytest"}
    assert not modules(project["dependencies"]) & optional


# Runs with the optional modules made unimportable (a None entry in sys.modules also hides it from find_spec).
CORE_ONLY = """
import json, sys
OPTIONAL = {optional}
for name in OPTIONAL:
    sys.modules[name] = None
import numpy as np
import anndata
import configuration_scinterpreter, modeling_scinterpreter, processing_scinterpreter, pipeline_scinterpreter
import scinterpreter, scinterpreter.annotate, scinterpreter.models, scinterpreter.train, scinterpreter.plots
from transformers import pipeline

folder, genes = sys.argv[1], json.loads(sys.argv[2])
annotate = pipeline("cell-annotation", model=folder, trust_remote_code=True)
counts = np.random.default_rng(0).poisson(1.5, size=(6, len(genes))).astype(np.float32)
labels = [result["label"] for result in annotate(counts, gene_names=genes)]
cells = anndata.AnnData(counts)
cells.var_names = genes
adata = annotate(cells).adata
errors = {{}}
for name, call in {{"train": lambda: scinterpreter.train.main([]),
                   "plots": lambda: scinterpreter.plots.plot_umaps({{}}, [], "umap.png"),
                   "majority_voting": lambda: annotate(counts, gene_names=genes, majority_voting=True)}}.items():
    try:
        call()
    except (ImportError, ValueError) as error:
        errors[name] = str(error)
scinterpreter.train.draw(scinterpreter.plots.plot_umaps, {{}}, [], "umap.png")  # training goes on, with a warning
print(json.dumps({{"labels": labels, "obs": list(adata.obs.columns), "errors": errors}}))
"""


@pytest.mark.slow
def test_the_core_annotates_without_any_optional_module_and_names_the_extras_otherwise(saved_tiny_model, tmp_path):
    from test_remote_code import _requirement_closure

    tomllib = pytest.importorskip("tomllib")
    core = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    # Blocked: the optional modules that the core's own requirements do not bring (pyyaml comes with anndata).
    brought = {dist.metadata["Name"].lower() for dist in _requirement_closure(core)}
    optional = sorted({module for wanted in EXTRAS.values() for module in wanted
                       if PIP_NAMES.get(module, module) not in brought})
    script = tmp_path / "core_only.py"
    script.write_text(CORE_ONLY.format(optional=optional))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, str(script), str(saved_tiny_model), json.dumps(GENES)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(result["labels"]) == 6 and "scinterpreter" in result["obs"]
    errors = result["errors"]
    assert errors["train"].startswith("training (scinterpreter-train, train.py) needs accelerate, datasets, evaluate")
    assert errors["train"].endswith("pip install 'scinterpreter[train]'")
    assert errors["plots"] == "plot_umaps needs matplotlib, scanpy: pip install 'scinterpreter[plots]'"
    assert "pip install 'scinterpreter[plots]'" in errors["majority_voting"]
    assert "umap.png not written: plot_umaps needs matplotlib, scanpy: pip install 'scinterpreter[plots]'" in run.stderr
