"""Gene knowledge: many gene-ID styles in, the same model inputs out; orthologs; gene tables."""

import numpy as np
import pytest
import torch
from conftest import shared_file

from gene_matching_scinterpreter import GeneMatcher, detect_gene_id_style
from processing_scinterpreter import ScInterpreterProcessor
from scinterpreter.genes import build_gene_table, load_gene_descriptions, load_gene_id_maps


@pytest.fixture(scope="module")
def human_processor():
    table = build_gene_table(encoder="random")
    return ScInterpreterProcessor(gene_vocab=table.vocab, n_top_genes=64, **load_gene_id_maps(table.vocab))


def test_each_id_style_matches_by_its_rule(human_processor):
    report = human_processor.match_genes(["CD3E", "cd19", "IDDM", "ENSG00000105383.15", "930", "MS4A1"])
    assert report.n_matched == 6
    assert report.by_rule == {"exact": 2, "case": 1, "alias": 1, "ensembl": 1, "entrez": 1, "ortholog": 0}


def test_mouse_symbols_match_human_genes_through_orthologs(human_processor):
    names = ["Ins1", "Ins2", "Gcg", "Cd3e", "Ptprc", "Cd79a", "H2-K1"]
    report = human_processor.match_genes(names)
    assert report.id_style == "mouse symbols"
    assert report.by_rule["ortholog"] == 7
    values = np.arange(1, 8, dtype=np.float32)[None] / 10
    out = human_processor(values, gene_names=names, min_matched_genes=1, return_tensors="np")
    vocab = human_processor.gene_vocab
    # Ins1 and Ins2 both map to INS, so their values are summed
    assert vocab[out["gene_ids"][0, 0]] == "HLA-E"
    assert "INS" in {vocab[i] for i in out["gene_ids"][0][out["gene_mask"][0] == 1]}
    assert out["gene_mask"][0].sum() == 6


def test_the_matcher_alone_matches_as_the_processor_does(human_processor):
    names = ["CD3E", "cd19", "IDDM", "ENSG00000105383.15", "930", "MS4A1", "CD3E", "unknown-1"]
    maps = {name: getattr(human_processor, name) for name in ("alias_map", "ensembl_map", "entrez_map", "ortholog_map")}
    matched = GeneMatcher(human_processor.gene_vocab, **maps).match(names)
    assert matched.report == human_processor.match_genes(names)
    vocab = human_processor.gene_vocab
    assert {names[column]: vocab[row] for column, row in zip(matched.columns, matched.vocab_ids)} == {
        "CD3E": "CD3E", "cd19": "CD19", "IDDM": "INS", "ENSG00000105383.15": "CD33", "MS4A1": "MS4A1"}
    # "930" (Entrez) is CD19 again and CD3E comes twice: both are summed into the gene matched first
    assert [vocab[matched.vocab_ids[target]] for target in matched.extra_targets] == ["CD19", "CD3E"]


@pytest.mark.parametrize("names, style", [
    (["ENSG00000105383", "ENSG00000010610.10"], "Ensembl IDs"), (["930", "3630"], "Entrez IDs"),
    (["Cd3e", "Ins1"], "mouse symbols"), (["CD3E", "INS"], "symbols"),
])
def test_gene_id_style_is_detected(names, style):
    assert detect_gene_id_style(names) == style


def test_renamed_baron_genes_give_the_same_model_inputs(human_processor):
    """Baron human with gene names rewritten to versioned Ensembl IDs, aliases and lower case."""
    from scinterpreter.data import read_h5ad

    adata = read_h5ad(shared_file("scrna", "baron_human_pancreas.h5ad"))
    maps = human_processor
    to_ensembl = {symbol: ensembl for ensembl, symbol in maps.ensembl_map.items()}
    to_alias = {}
    for alias, symbol in maps.alias_map.items():
        to_alias.setdefault(symbol, alias)
    rng = np.random.default_rng(0)
    renamed, kinds = [], {"ensembl": 0, "alias": 0, "lower": 0}
    for name in adata.var_names:
        pick = rng.integers(4)
        if pick == 0 and name in to_ensembl:
            renamed.append(f"{to_ensembl[name]}.{rng.integers(1, 20)}")
            kinds["ensembl"] += 1
        elif pick == 1 and name in to_alias and to_alias[name] not in renamed:
            renamed.append(to_alias[name])
            kinds["alias"] += 1
        elif pick == 2:
            renamed.append(name.lower())
            kinds["lower"] += 1
        else:
            renamed.append(name)
    assert min(kinds.values()) > 1000
    original = human_processor.match_genes(adata.var_names)
    rewritten = human_processor.match_genes(renamed)
    assert abs(rewritten.n_matched - original.n_matched) <= 0.01 * original.n_matched
    cells = adata[:300]
    a = human_processor(cells)
    b = human_processor(cells.X, gene_names=renamed)
    same_cells = (a["gene_ids"] == b["gene_ids"]).all(1) & torch.isclose(a["gene_values"], b["gene_values"]).all(1)
    assert same_cells.float().mean() >= 0.99


def test_mouse_descriptions_borrow_the_human_orthologs_text():
    mouse = load_gene_descriptions("mouse").set_index("symbol")
    assert mouse.loc["Ins1", "human_ortholog"] == "INS"
    assert "Human ortholog: INS. From the human ortholog:" in mouse.loc["Ins1", "description"]


def test_gene_table_is_cached_by_content_and_centred(tmp_path, monkeypatch):
    import scinterpreter.genes

    monkeypatch.setenv("SCINTERPRETER_CACHE", str(tmp_path))
    encode = scinterpreter.genes._encode
    # Random vectors plus one direction they all share (as real description vectors have), which centring removes.
    monkeypatch.setattr(scinterpreter.genes, "_encode", lambda *args: encode(*args) + 3.0)
    first = build_gene_table(encoder="random")

    def no_encoding(*args, **kwargs):
        raise AssertionError("the cached table should have been read, not embedded again")

    monkeypatch.setattr(scinterpreter.genes, "_encode", no_encoding)
    second = build_gene_table(encoder="random")
    assert first.content_hash == second.content_hash
    assert np.array_equal(first.embeddings, second.embeddings)
    assert np.abs(first.embeddings.mean(0)).max() < 1e-3  # 0.06 uncentred
    assert np.allclose(np.linalg.norm(first.embeddings, axis=1), 1, atol=1e-5)


def test_mean_pooled_encoder_ignores_padding(tmp_path):
    """The `minilm` and `backbone` encoders mean-pool hidden states over real tokens only."""
    from conftest import make_tiny_backbone
    from transformers import AutoTokenizer, LlamaModel

    from scinterpreter.genes import _mean_pooled

    folder = make_tiny_backbone(tmp_path / "backbone")
    model, tokenizer = LlamaModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = "[UNK]"
    texts = ["what is the cell type", "cell"]
    together = _mean_pooled(model, tokenizer, texts, max_tokens=16)
    alone = _mean_pooled(model, tokenizer, texts[1:], max_tokens=16)
    assert together.shape == (2, 32)
    np.testing.assert_allclose(together[1], alone[0], atol=1e-5)


def test_a_gene_table_write_cut_short_leaves_no_file_that_later_loads(tmp_path, monkeypatch):
    import pandas as pd
    import pytest
    import safetensors.numpy

    from scinterpreter.genes import build_gene_table

    monkeypatch.setenv("SCINTERPRETER_CACHE", str(tmp_path))
    descriptions = pd.DataFrame({"symbol": ["INS", "GCG"], "description": ["insulin", "glucagon"]})

    def killed_mid_write(tensors, filename, metadata=None):
        open(filename, "wb").write(b"half a safetensors file")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.numpy, "save_file", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        build_gene_table(descriptions, encoder="random")
    monkeypatch.undo()
    monkeypatch.setenv("SCINTERPRETER_CACHE", str(tmp_path))
    table = build_gene_table(descriptions, encoder="random")  # embeds again instead of reading half a file
    assert table.embeddings.shape[0] == 2
