import numpy as np
import pytest
import torch
from conftest import GENES
from transformers import AutoProcessor

from features_scinterpreter import reference_vector, top_genes
from processing_scinterpreter import ScInterpreterInputError, ScInterpreterProcessor


def test_top_genes_are_the_most_expressed_in_descending_order(processor):
    values = np.zeros((1, len(GENES)), dtype=np.float32)
    values[0, [3, 7, 20]] = [5, 50, 10]
    out = processor(values, gene_names=GENES, return_tensors="np")
    assert out["gene_ids"][0, :3].tolist() == [7, 20, 3]
    assert out["gene_mask"][0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert np.all(np.diff(out["gene_values"][0, :3]) < 0)


def test_counts_are_normalised_to_target_sum_and_log1p(processor):
    values = np.zeros((1, len(GENES)), dtype=np.float32)
    values[0, :4] = [1, 2, 3, 4]
    out = processor(values, gene_names=GENES, return_tensors="np")
    assert np.allclose(out["gene_values"][0, 0], np.log1p(4 / 10 * 1e4), rtol=1e-5)


def test_log_normalised_input_is_used_as_is(processor):
    values = np.zeros((1, len(GENES)), dtype=np.float32)
    values[0, :3] = [0.5, 2.25, 1.75]
    out = processor(values, gene_names=GENES, return_tensors="np")
    assert out["gene_values"][0, :3].tolist() == [2.25, 1.75, 0.5]


def test_declared_input_kind_overrides_detection(counts):
    as_log = ScInterpreterProcessor(gene_vocab=GENES, n_top_genes=8, input_kind="log1p")
    out = as_log(counts, gene_names=GENES, return_tensors="np")
    assert out["gene_values"].max() == counts.max()


def test_ties_are_broken_by_vocabulary_order_whatever_the_column_order(processor, counts):
    order = np.random.default_rng(1).permutation(len(GENES))
    a = processor(counts, gene_names=GENES, return_tensors="np")
    b = processor(counts[:, order], gene_names=[GENES[i] for i in order], return_tensors="np")
    for key in ("gene_ids", "gene_values", "gene_mask"):
        np.testing.assert_array_equal(a[key], b[key])


def test_every_input_type_gives_the_same_inputs(processor, counts, adata):
    pd = pytest.importorskip("pandas")
    sparse = pytest.importorskip("scipy.sparse")
    reference = processor(counts, gene_names=GENES)
    variants = [
        processor(adata),
        processor(sparse.csr_matrix(counts), gene_names=GENES),
        processor(pd.DataFrame(counts, columns=GENES)),
        processor(torch.from_numpy(counts), gene_names=GENES),
    ]
    for out in variants:
        for key in reference:
            assert torch.equal(out[key], reference[key]), key
    one = processor(dict(zip(GENES, counts[2])))
    series = processor(pd.Series(counts[2], index=GENES))
    for key in reference:
        assert torch.equal(one[key][0], reference[key][2])
        assert torch.equal(series[key][0], reference[key][2])


def test_anndata_layer_is_read_instead_of_x(processor, adata, counts):
    adata.layers["counts"] = adata.X.copy()
    adata.X = np.log1p(adata.X)
    a = processor(adata, layer="counts")
    b = processor(counts, gene_names=GENES)
    assert torch.equal(a["gene_ids"], b["gene_ids"])


def test_top_genes_ties_unreferenced_genes_exclusion_and_padding():
    vocab_ids = np.array([1, 3, 4, 7, 9])  # the vocabulary rows of the 5 matched columns
    values = np.array([[2, 0, 2, 1, 2], [1, 3, 3, 0, 5]], dtype=np.float32)
    gene_ids, gene_values, gene_mask = top_genes(values, vocab_ids, n_top_genes=6)
    assert gene_ids.tolist() == [[1, 4, 9, 7, 0, 0], [9, 3, 4, 1, 0, 0]]  # ties in vocabulary order; 6 > 5 padded
    assert gene_values[0].tolist() == [2, 2, 2, 1, 0, 0] and gene_mask.sum(1).tolist() == [4, 4]
    reference = reference_vector(10, [1, 3, 4, 7], [0.5, 0.0, 2.5, 0.0])  # row 9 never measured: NaN
    assert np.isnan(reference[[0, 9]]).all() and reference[4] == 2.5
    gene_ids, gene_values, gene_mask = top_genes(values, vocab_ids, 6, "excess", "excess", reference)
    # Row 9 (the second cell's highest) has no reference, row 7 is not expressed there: neither is chosen.
    assert gene_ids.tolist() == [[1, 7, 4, 0, 0, 0], [3, 1, 4, 0, 0, 0]]
    assert gene_values.tolist() == [[1.5, 1, -0.5, 0, 0, 0], [3, 0.5, 0.5, 0, 0, 0]]
    excluded = np.zeros(10, dtype=bool)
    excluded[3] = True
    assert top_genes(values, vocab_ids, 6, "excess", "excess", reference, excluded)[0][1].tolist() == [1, 4, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="reference profile"):
        top_genes(values, vocab_ids, 6, selection="excess")


def test_case_insensitive_matching_is_reported(processor):
    names = ["cd3e", "CD19", "unknown-1", "gene3"]
    report = processor.match_genes(names)
    assert report.n_total == 4 and report.n_matched == 3
    assert report.by_rule["exact"] == 1 and report.by_rule["case"] == 2
    assert report.unmatched == ["unknown-1"]
    assert report.matched_fraction == 0.75


def test_duplicate_names_are_summed(processor):
    values = np.zeros((1, 3), dtype=np.float32)
    values[0] = [0.5, 0.25, 0.125]
    processor.n_top_genes = 2
    out = processor(values, gene_names=["CD3E", "cd3e", "INS"], min_matched_genes=1, return_tensors="np")
    assert out["gene_values"][0].tolist() == [0.75, 0.125]
    assert processor.match_genes(["CD3E", "cd3e", "INS"]).n_duplicates == 1


def test_a_replaced_vocabulary_is_matched_afresh(processor):
    assert processor.match_genes(["CD3E", "INS"]).n_matched == 2
    processor.gene_vocab = ["INS"] + processor.gene_vocab[1:]  # same length, new list: the old matcher must not stay
    assert processor.match_genes(["CD3E", "INS"]).by_rule["exact"] == 2
    processor.gene_vocab = processor.gene_vocab[:-1]
    assert processor.matcher.gene_vocab is processor.gene_vocab


def test_saves_and_loads_with_auto_processor(tmp_path, processor, counts):
    from scinterpreter.build import register_auto_classes
    from conftest import tiny_config

    register_auto_classes(tiny_config())
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert loaded.gene_vocab == GENES and loaded.n_top_genes == 8
    a, b = processor(counts, gene_names=GENES), loaded(counts, gene_names=GENES)
    assert torch.equal(a["gene_ids"], b["gene_ids"])


def test_excluded_genes_are_never_chosen_but_count_in_the_library_size():
    vocab = ["RPL13", "RPS4X", "MT-CO1", "RPS6KA1", "CD3E", "MS4A1", "RPLP0", "GNLY"]
    counts = np.array([[90, 80, 70, 1, 5, 3, 60, 0], [50, 40, 30, 0, 0, 0, 20, 0]], dtype=np.float32)
    plain = ScInterpreterProcessor(gene_vocab=vocab, n_top_genes=4)
    excluding = ScInterpreterProcessor(gene_vocab=vocab, n_top_genes=4, exclude_genes="ribosomal_mitochondrial")
    assert [vocab[i] for i in np.flatnonzero(excluding.excluded_vocab_rows())] == ["RPL13", "RPS4X", "MT-CO1", "RPLP0"]
    out = excluding(counts, gene_names=vocab, return_tensors="np")
    assert [vocab[i] for i, m in zip(out["gene_ids"][0], out["gene_mask"][0]) if m] == ["CD3E", "MS4A1", "RPS6KA1"]
    assert np.isclose(out["gene_values"][0, 0], np.log1p(5 / counts[0].sum() * 1e4))
    assert out["gene_mask"][1].sum() == 0  # only excluded genes expressed: an empty cell, not a ribosomal one
    assert plain(counts, gene_names=vocab, return_tensors="np")["gene_mask"][1].sum() == 4
    # a custom pattern, kept through save / load
    custom = ScInterpreterProcessor(gene_vocab=vocab, n_top_genes=4, exclude_genes="^cd3")
    assert [vocab[i] for i in np.flatnonzero(custom.excluded_vocab_rows())] == ["CD3E"]


def test_a_processor_saved_with_the_older_gene_ranking_expression_loads_as_gene_selection_expression(tmp_path):
    import json

    ScInterpreterProcessor(gene_vocab=GENES).save_pretrained(tmp_path)
    (saved,) = tmp_path.glob("*processor_config.json")
    settings = {key: value for key, value in json.loads(saved.read_text()).items() if key != "gene_selection"}
    saved.write_text(json.dumps({**settings, "gene_ranking": "expression"}))
    loaded = ScInterpreterProcessor.from_pretrained(tmp_path)
    assert loaded.gene_selection == "expression" and not hasattr(loaded, "gene_ranking")
    # The refusal of its removed "standardized": tests/test_reliability.py.


def test_exclude_genes_is_saved_with_the_processor(tmp_path):
    processor = ScInterpreterProcessor(gene_vocab=GENES, exclude_genes="ribosomal_mitochondrial")
    processor.save_pretrained(tmp_path)
    assert ScInterpreterProcessor.from_pretrained(tmp_path).exclude_genes == "ribosomal_mitochondrial"


def _housekeeping_cells():
    """Every cell expresses GENE0 most; each also expresses one gene of its own, less than GENE0."""
    values = np.full((6, len(GENES)), 0.0, dtype=np.float32)
    values[:, 0] = 3.5  # not integers: log-normalised values, used as they are
    for cell in range(6):
        values[cell, 10 + cell] = 2.5
    return values


def test_fit_learns_the_reference_and_chooses_genes_by_their_excess_over_it():
    values = _housekeeping_cells()
    processor = ScInterpreterProcessor(gene_vocab=GENES, n_top_genes=1)
    assert processor(values, gene_names=GENES, return_tensors="np")["gene_ids"][:, 0].tolist() == [0] * 6
    assert processor.fit(values, gene_names=GENES) is processor and processor.selection == "excess"
    reference = processor.reference_profile()
    assert reference[0] == pytest.approx(3.5) and reference[10] == pytest.approx(2.5 / 6, abs=1e-5)  # 5 decimals
    chosen = processor(values, gene_names=GENES, return_tensors="np")
    assert chosen["gene_ids"][:, 0].tolist() == [10, 11, 12, 13, 14, 15]
    assert chosen["gene_values"][:, 0].tolist() == [2.5] * 6  # tokens still carry the expression by default


def test_token_value_excess_carries_expression_minus_the_reference():
    values = _housekeeping_cells()
    processor = ScInterpreterProcessor(gene_vocab=GENES, n_top_genes=2, token_value="excess").fit(values, GENES)
    out = processor(values, gene_names=GENES, return_tensors="np")
    np.testing.assert_allclose(out["gene_values"][0], [2.5 - 2.5 / 6, 0.0], atol=1e-5)


def test_gene_selection_expression_keeps_the_papers_rule_after_fit():
    values = _housekeeping_cells()
    processor = ScInterpreterProcessor(gene_vocab=GENES, n_top_genes=1, gene_selection="expression").fit(values, GENES)
    assert processor(values, gene_names=GENES, return_tensors="np")["gene_ids"][:, 0].tolist() == [0] * 6


def test_genes_the_reference_never_measured_are_never_chosen():
    values = _housekeeping_cells()
    processor = ScInterpreterProcessor(gene_vocab=GENES, n_top_genes=3).fit(values[:, :20], GENES[:20])
    query = values.copy()
    query[:, 30] = 9.5  # measured in the query only
    chosen = processor(query, gene_names=GENES, return_tensors="np")
    assert 30 not in chosen["gene_ids"][chosen["gene_mask"].astype(bool)]


def test_fitted_reference_is_saved_as_json_and_loads_as_remote_code(tmp_path):
    values = _housekeeping_cells()
    from conftest import tiny_config
    from scinterpreter.build import register_auto_classes

    register_auto_classes(tiny_config())
    processor = ScInterpreterProcessor(gene_vocab=GENES, n_top_genes=2).fit(values, GENES)
    processor.save_pretrained(tmp_path)
    assert {p.suffix for p in tmp_path.iterdir()} == {".json", ".py"}
    loaded = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert loaded.is_fitted and loaded.selection == "excess"
    for key, value in processor(values, gene_names=GENES, return_tensors="np").items():
        np.testing.assert_array_equal(loaded(values, gene_names=GENES, return_tensors="np")[key], value)


def test_the_linear_gene_list_extends_the_soft_tokens_genes_by_the_same_ranking(tmp_path, counts):
    from conftest import tiny_config

    from scinterpreter.build import register_auto_classes

    short = ScInterpreterProcessor(gene_vocab=GENES, n_top_genes=8)
    extended = ScInterpreterProcessor(gene_vocab=GENES, n_top_genes=8, n_linear_genes=20)
    plain, both = short(counts, gene_names=GENES, return_tensors="np"), extended(counts, gene_names=GENES,
                                                                                return_tensors="np")
    assert set(plain) == {"gene_ids", "gene_values", "gene_mask"}
    for name in ("gene_ids", "gene_values", "gene_mask"):
        np.testing.assert_array_equal(both[name], plain[name])  # the soft tokens do not change
        np.testing.assert_array_equal(both[f"linear_{name}"][:, :8], plain[name])  # and lead the longer list
        assert both[f"linear_{name}"].shape == (len(counts), 20)
    longest = ScInterpreterProcessor(gene_vocab=GENES, n_top_genes=20)(counts, gene_names=GENES, return_tensors="np")
    np.testing.assert_array_equal(both["linear_gene_ids"], longest["gene_ids"])
    register_auto_classes(tiny_config())
    extended.save_pretrained(tmp_path)
    assert AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True).n_linear_genes == 20


def test_a_linear_gene_list_shorter_than_the_soft_tokens_is_refused():
    with pytest.raises(ScInterpreterInputError, match="n_linear_genes must be 0"):
        ScInterpreterProcessor(gene_vocab=GENES, n_top_genes=8, n_linear_genes=4)


def test_a_variable_gene_panel_is_picked_by_fit_saved_and_kept_when_the_reference_is_refitted(tmp_path, counts):
    from conftest import tiny_config

    from scinterpreter.build import register_auto_classes

    processor = ScInterpreterProcessor(gene_vocab=GENES, n_top_genes=4, n_linear_genes=10,
                                       linear_gene_selection="variable")
    with pytest.raises(ScInterpreterInputError, match="call processor.fit"):
        processor(counts, gene_names=GENES)
    processor.fit(counts, gene_names=GENES)
    panel = processor.linear_gene_panel
    assert 10 <= len(panel) < 16 and panel == sorted(panel)  # scanpy keeps genes tied at its cut
    inputs = processor(counts, gene_names=GENES, return_tensors="np")
    plain = ScInterpreterProcessor(gene_vocab=GENES, n_top_genes=4).fit(counts, gene_names=GENES)
    np.testing.assert_array_equal(inputs["gene_ids"], plain(counts, gene_names=GENES, return_tensors="np")["gene_ids"])
    mask = inputs["linear_gene_mask"].astype(bool)
    values, ids = processor.normalize(counts, gene_names=GENES)
    for cell in range(len(counts)):  # each cell's expressed panel genes with their normalised values, none else
        expressed = {int(g): float(v) for g, v in zip(ids, values[cell]) if g in panel and v > 0}
        listed = dict(zip(inputs["linear_gene_ids"][cell][mask[cell]].tolist(),
                          inputs["linear_gene_values"][cell][mask[cell]].tolist()))
        assert listed.keys() == expressed.keys()
        assert listed == pytest.approx(expressed)
    assert inputs["linear_gene_ids"].shape[1] == mask.sum(1).max()  # as wide as the cell with most panel genes
    register_auto_classes(tiny_config())
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert loaded.linear_gene_selection == "variable" and loaded.linear_gene_panel == panel
    loaded.fit(counts[::-1][:20] * 3, gene_names=GENES)  # another batch: the reference changes, the panel stays
    assert loaded.linear_gene_panel == panel


def test_a_panel_larger_than_the_matched_genes_holds_them_all_and_a_bad_selection_is_refused(counts):
    processor = ScInterpreterProcessor(gene_vocab=GENES, n_top_genes=4, n_linear_genes=10_000,
                                       linear_gene_selection="variable").fit(counts, gene_names=GENES)
    assert processor.linear_gene_panel == sorted(processor.reference_gene_ids)
    with pytest.raises(ScInterpreterInputError, match="linear_gene_selection must be one of"):
        ScInterpreterProcessor(gene_vocab=GENES, linear_gene_selection="hvg")
