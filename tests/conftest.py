import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

from configuration_scinterpreter import ScInterpreterConfig  # noqa: E402
from modeling_scinterpreter import ScInterpreterForCellAnnotation  # noqa: E402
from processing_scinterpreter import ScInterpreterProcessor  # noqa: E402
from scinterpreter.build import register_auto_classes, save_model_folder  # noqa: E402

GENES = [f"GENE{i}" for i in range(40)] + ["CD3E", "CD19", "INS", "GCG", "NA"]
LABELS = ["alpha", "beta", "t_cell"]


def tiny_config(**overrides):
    values = dict(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=64, max_position_embeddings=256),
        gene_vocab_size=len(GENES), gene_embedding_dim=16, n_top_genes=8, projector_hidden_size=24,
        head_hidden_size=16, instruction_token_ids=[5, 9, 11, 3],
        id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)},
    )
    values.update(overrides)
    return ScInterpreterConfig(**values)


def make_tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    config = tiny_config(**overrides)
    register_auto_classes(config)
    model = ScInterpreterForCellAnnotation(config)
    model.model.gene_embeddings.copy_(torch.randn(config.gene_vocab_size, config.gene_embedding_dim))
    return model.eval()


# Read-only pieces of the real cache that integration tests use: the converted SmolLM2 and the embedded gene tables.
REAL_CACHE_PARTS = ("backbones", "gene_tables")


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory):
    """scInterpreter's cache (`SCINTERPRETER_CACHE`) for the whole run, module fixtures included: a temporary folder
    with links to the real cache's backbones and gene tables, so that nothing is written into the real cache."""
    from scinterpreter.backbone import cache_dir

    real, cache = cache_dir(), tmp_path_factory.mktemp("scinterpreter-cache")
    for part in REAL_CACHE_PARTS:
        (cache / part).mkdir()
        for entry in sorted((real / part).glob("*")) if (real / part).is_dir() else []:
            if not entry.name.endswith(".partial"):
                (cache / part / entry.name).symlink_to(entry.resolve())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SCINTERPRETER_CACHE", str(cache))
        yield cache


@pytest.fixture(autouse=True)
def scinterpreter_cache(request, session_cache, tmp_path_factory, monkeypatch):
    """Each test's scInterpreter cache: a new empty folder, so that no test reads what another left there."""
    # Integration tests keep the session cache: its links reach the real converted SmolLM2 and gene tables (a new
    # write, such as a first conversion, lands in the temporary folder, never in the real cache).
    if "integration" in request.keywords:
        return session_cache
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("SCINTERPRETER_CACHE", str(cache))
    return cache


@pytest.fixture
def tiny_model():
    return make_tiny_model()


@pytest.fixture
def processor():
    return ScInterpreterProcessor(gene_vocab=GENES, n_top_genes=8)


def make_counts(n_cells=12, n_genes=len(GENES), seed=0):
    rng = np.random.default_rng(seed)
    return rng.poisson(1.5, size=(n_cells, n_genes)).astype(np.float32)


@pytest.fixture
def counts():
    return make_counts()


@pytest.fixture
def adata(counts):
    anndata = pytest.importorskip("anndata")
    import pandas as pd

    obs = pd.DataFrame({"cell_type": [LABELS[i % 3] for i in range(len(counts))]},
                       index=[f"cell{i}" for i in range(len(counts))])
    return anndata.AnnData(X=counts.copy(), obs=obs, var=pd.DataFrame(index=GENES))


@pytest.fixture
def saved_tiny_model(tmp_path, tiny_model, processor):
    return save_model_folder(tiny_model, processor, tmp_path / "tiny-model")


def shared_file(*parts):
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not here (tests read ../shared/data)")
    return path


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


# Marked tests (`slow`, `integration`) run with `--all` (what `.ci/run` runs) or when `-m` selects them; a plain
# `pytest` runs the fast unit tests only and reports the rest as skipped.
RUN_WITH_ALL = ("slow", "integration")


def pytest_addoption(parser):
    parser.addoption("--all", action="store_true", dest="run_all",
                     help="also run the tests marked slow (trainings, subprocesses, compiles) and integration "
                          "(real SmolLM2 backbone and data); without it only the fast tests run, unless -m selects")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("SCINTERPRETER_SKIP_INTEGRATION"):
        skip = pytest.mark.skip(reason="SCINTERPRETER_SKIP_INTEGRATION is set")
        for item in items:
            if "integration" in item.keywords:
                item.add_marker(skip)
    if config.getoption("run_all") or config.getoption("markexpr"):
        return
    for item in items:
        for marker in RUN_WITH_ALL:
            if marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=f"{marker}: run with --all (or -m {marker})"))
                break
