import sys

import numpy as np
import pytest
import torch
from conftest import GENES, LABELS
from transformers import pipeline



@pytest.fixture
def annotate(saved_tiny_model):
    return pipeline("cell-annotation", model=str(saved_tiny_model), trust_remote_code=True)


def test_one_result_per_cell_with_top_k(annotate, counts):
    results = annotate(counts, gene_names=GENES, top_k=2)
    assert len(results) == len(counts)
    for result in results:
        assert result["label"] in LABELS
        assert [t["label"] for t in result["top_k"]][0] == result["label"]
        assert len(result["top_k"]) == 2
        assert result["top_k"][0]["score"] >= result["top_k"][1]["score"]


def test_labels_agree_with_the_model_logits(annotate, tiny_model, processor, counts):
    logits = tiny_model(**processor(counts, gene_names=GENES)).logits
    expected = [LABELS[i] for i in logits.argmax(-1).tolist()]
    results = annotate(counts, gene_names=GENES, batch_size=5)
    assert [r["label"] for r in results] == expected
    probabilities = logits.softmax(-1).max(-1).values
    assert np.allclose([r["score"] for r in results], probabilities.detach().numpy(), atol=1e-5)


def test_anndata_is_annotated_on_a_copy_by_default(annotate, adata):
    before_obs, before_x = adata.obs.copy(), adata.X.copy()
    results = annotate(adata)
    assert list(adata.obs.columns) == list(before_obs.columns) and "X_scinterpreter" not in adata.obsm
    np.testing.assert_array_equal(adata.X, before_x)
    annotated = results.adata
    assert annotated is not adata
    assert annotated.obs["scinterpreter"].tolist() == [r["label"] for r in results]
    assert annotated.obs["scinterpreter_score"].dtype == np.float32
    assert annotated.obsm["X_scinterpreter"].shape == (adata.n_obs, 32)


def test_copy_false_writes_into_the_given_anndata_under_key_added(annotate, adata):
    results = annotate(adata, copy=False, key_added="predicted")
    assert results.adata is adata
    assert "predicted" in adata.obs and "predicted_score" in adata.obs


def test_existing_columns_are_kept_when_refused_and_replaced_with_overwrite(annotate, adata):
    adata.obs["scinterpreter"] = "mine"
    # The error itself: tests/test_reliability.py, "existing obs column without overwrite".
    with pytest.raises(ValueError, match="overwrite=True"):
        annotate(adata, copy=False)
    assert (adata.obs["scinterpreter"] == "mine").all()
    annotate(adata, copy=False, overwrite=True)
    assert set(adata.obs["scinterpreter"]) <= set(LABELS)


def test_threshold_and_empty_cells_give_unassigned(annotate, counts):
    counts = counts.copy()
    counts[0] = 0
    results = annotate(counts, gene_names=GENES)
    assert results[0]["label"] == "Unassigned"
    assert all(r["label"] == "Unassigned" for r in annotate(counts, gene_names=GENES, threshold=1.0))


def test_one_cell_as_a_dict(annotate, counts):
    results = annotate(dict(zip(GENES, counts[0].tolist())))
    assert len(results) == 1 and results[0]["label"] in LABELS


@pytest.mark.parametrize("forced, avx512_bf16, amx, expected", [
    ("float32", True, True, torch.float32),
    ("bfloat16", False, False, torch.bfloat16),
    (None, True, False, torch.bfloat16),
    (None, False, True, torch.bfloat16),
    (None, False, False, torch.float32),
], ids=["forced_float32", "forced_bfloat16", "avx512_bf16", "amx", "avx2_only"])
def test_pipeline_runs_the_backbone_in_the_fastest_dtype(annotate, monkeypatch, forced, avx512_bf16, amx, expected):
    """$SCINTERPRETER_BACKBONE_DTYPE when set; else bfloat16 on CPUs that run it natively, float32 on the others."""
    # The pipeline runs as remote code: its own copy of loading_scinterpreter, which caches the CPU's dtype.
    loading = sys.modules[sys.modules[type(annotate).__module__].select_backbone_dtype.__module__]
    monkeypatch.setattr(loading, "_FASTEST_DTYPE", {})
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    if forced:
        monkeypatch.setenv("SCINTERPRETER_BACKBONE_DTYPE", forced)
    else:
        monkeypatch.delenv("SCINTERPRETER_BACKBONE_DTYPE", raising=False)
    model = annotate.model.set_backbone_dtype(torch.float32 if expected == torch.bfloat16 else torch.bfloat16)
    annotate = type(annotate)(model=model, processor=annotate.processor)
    assert annotate.model.model.backbone_dtype == expected
    assert annotate.model.head.dense.weight.dtype == torch.float32


@pytest.mark.slow
def test_compiled_backbone_gives_the_same_annotation_with_a_short_last_batch(annotate, counts):
    expected = annotate(counts, gene_names=GENES, batch_size=5, compile_backbone=False)
    base_model = annotate.model.model
    state_keys = set(annotate.model.state_dict())
    compiled = annotate(counts, gene_names=GENES, batch_size=5, compile_backbone=True)  # 12 cells: 5 + 5 + 2
    assert base_model.is_backbone_compiled
    assert set(annotate.model.state_dict()) == state_keys
    assert [r["label"] for r in compiled] == [r["label"] for r in expected]
    # bf16 backbone; eager attention math against SDPA
    assert np.allclose(compiled.embeddings, expected.embeddings, rtol=0.05, atol=0.05)
    annotate(counts[:3], gene_names=GENES, batch_size=5)  # once compiled, a small call stays compiled
    assert base_model.is_backbone_compiled
    annotate(counts[:3], gene_names=GENES, compile_backbone=False)
    assert not base_model.is_backbone_compiled


def test_a_failing_compile_warns_and_runs_uncompiled(annotate, counts, monkeypatch, caplog):
    expected = annotate(counts, gene_names=GENES, compile_backbone=False)
    base_model = annotate.model.model
    original = base_model.compile_backbone

    def compile_without_a_compiler(enable=True):
        original(enable)
        if enable:
            def fail(*args, **kwargs):
                raise RuntimeError("InductorError: no C++ compiler found")

            base_model.language_model._compiled_call_impl = fail
        return base_model

    monkeypatch.setattr(base_model, "compile_backbone", compile_without_a_compiler)
    with caplog.at_level("WARNING"):
        results = annotate(counts, gene_names=GENES, compile_backbone=True)
    assert "torch.compile of the backbone failed" in caplog.text
    assert not base_model.is_backbone_compiled
    assert [r["label"] for r in results] == [r["label"] for r in expected]
    assert np.allclose(results.embeddings, expected.embeddings)


def test_anndata_gets_the_probability_matrix_and_what_made_it(annotate, adata):
    annotated = annotate(adata, threshold=0.2).adata
    probabilities = annotated.obsm["scinterpreter_probabilities"]
    record = annotated.uns["scinterpreter"]
    assert probabilities.shape == (adata.n_obs, len(LABELS)) and record["labels"] == LABELS
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
    best = np.array(record["labels"])[probabilities.argmax(1)]
    assert (best == annotated.obs["scinterpreter"].astype(str)).all()
    np.testing.assert_allclose(probabilities.max(1), annotated.obs["scinterpreter_score"], atol=1e-6)
    assert record["threshold"] == 0.2 and record["calibration_temperature"] == 1.0
    assert "matched the model's vocabulary" in record["gene_match"] and record["model"]


def test_a_second_annotation_under_another_key_added_keeps_the_first(annotate, adata):
    first = annotate(adata).adata
    second = annotate(first, key_added="again").adata
    assert {"X_scinterpreter", "scinterpreter_probabilities", "X_again", "again_probabilities"} <= set(second.obsm)
    assert {"scinterpreter", "again"} <= set(second.uns)


def test_the_calibration_temperature_changes_scores_not_labels(saved_tiny_model, counts):
    import json

    plain = pipeline("cell-annotation", model=str(saved_tiny_model), trust_remote_code=True)(counts, gene_names=GENES)
    config = json.loads((saved_tiny_model / "config.json").read_text())
    (saved_tiny_model / "config.json").write_text(json.dumps({**config, "calibration_temperature": 3.0}))
    scaled = pipeline("cell-annotation", model=str(saved_tiny_model), trust_remote_code=True)(counts, gene_names=GENES)
    assert [r["label"] for r in scaled] == [r["label"] for r in plain]
    assert all(s["score"] < p["score"] for s, p in zip(scaled, plain))  # 3 levels any peaked distribution
    np.testing.assert_allclose(scaled.probabilities.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("stored", ["null", "absent"])
def test_a_model_without_a_calibration_temperature_gives_the_plain_softmax_and_records_it(
        saved_tiny_model, tiny_model, processor, counts, adata, stored):
    import json

    config = json.loads((saved_tiny_model / "config.json").read_text())
    if stored == "absent":  # a folder saved before calibration existed
        del config["calibration_temperature"]
    else:  # trained with calibrate=False
        config["calibration_temperature"] = None
    (saved_tiny_model / "config.json").write_text(json.dumps(config))
    annotate = pipeline("cell-annotation", model=str(saved_tiny_model), trust_remote_code=True)
    softmax = tiny_model(**processor(counts, gene_names=GENES)).logits.detach().float().softmax(-1).numpy()
    # 5e-5: float32 noise between batch shapes (up to 1.3e-5 seen), well under what a temperature moves (next test).
    np.testing.assert_allclose(annotate(counts, gene_names=GENES).probabilities, softmax, atol=5e-5)
    annotated = annotate(adata).adata
    np.testing.assert_allclose(annotated.obsm["scinterpreter_probabilities"], softmax, atol=5e-5)
    record = annotated.uns["scinterpreter"]
    assert record["calibrated"] is False and record["calibration_temperature"] == 1.0


@pytest.mark.parametrize("temperature", [None, 3.0])
def test_one_cell_gets_the_probabilities_of_its_row_of_a_matrix(saved_tiny_model, tiny_model, processor, counts,
                                                                  adata, temperature):
    annotate = _with_config(saved_tiny_model, calibration_temperature=temperature)
    logits = tiny_model(**processor(counts, gene_names=GENES)).logits.detach().float()
    expected = (logits / (temperature or 1.0)).softmax(-1).numpy()
    if temperature:  # the tiny model's probabilities are near 1/3: make sure the temperature shows at this tolerance
        assert not np.allclose(expected, logits.softmax(-1).numpy(), atol=5e-5)
    np.testing.assert_allclose(annotate(counts, gene_names=GENES).probabilities, expected, atol=5e-5)
    cell = 3
    one_cell = {"vector": annotate(counts[cell], gene_names=GENES),
                "dict": annotate(dict(zip(GENES, counts[cell].tolist()))),
                "1-row AnnData": annotate(adata[cell : cell + 1])}
    for kind, results in one_cell.items():
        assert results.probabilities.shape == (1, len(LABELS)), kind
        np.testing.assert_allclose(results.probabilities[0], expected[cell], atol=5e-5, err_msg=kind)
        assert results[0]["score"] == pytest.approx(expected[cell].max(), abs=5e-5), kind
    record = one_cell["1-row AnnData"].adata.uns["scinterpreter"]
    assert record["calibrated"] is (temperature is not None)
    assert record["calibration_temperature"] == (temperature or 1.0)


def test_options_given_at_construction_are_the_defaults_of_every_call(saved_tiny_model, counts):
    annotate = pipeline("cell-annotation", model=str(saved_tiny_model), trust_remote_code=True, top_k=1,
                        threshold=0.99)
    results = annotate(counts, gene_names=GENES)
    assert all(len(r["top_k"]) == 1 for r in results)
    assert {r["label"] for r in results} == {"Unassigned"}  # no tiny-model probability reaches .99
    overridden = annotate(counts, gene_names=GENES, top_k=2, threshold=0.0)
    assert all(len(r["top_k"]) == 2 for r in overridden) and "Unassigned" not in {r["label"] for r in overridden}



# Per option: given at construction, then given to a call; each with an effect that a call shows.
OPTIONS = {
    "gene_names": ({"gene_names": GENES[::-1]}, {"gene_names": GENES}),
    "layer": ({"layer": "zeros"}, {"layer": "counts"}),
    "refit_reference": ({"refit_reference": True}, {"refit_reference": False}),
    "batch_size": ({"batch_size": 5}, {"batch_size": 4}),
    "compile_backbone": ({"compile_backbone": True}, {"compile_backbone": False}),
    "show_progress": ({"show_progress": True}, {"show_progress": False}),
    "explain": ({"explain": 2}, {"explain": False}),
    "top_k": ({"top_k": 1}, {"top_k": 2}),
    "threshold": ({"threshold": 0.99}, {"threshold": 0.0}),
    "key_added": ({"key_added": "mine"}, {"key_added": "theirs"}),
    "copy": ({"copy": False}, {"copy": True}),
    "overwrite": ({"key_added": "cell_type", "overwrite": True}, {"overwrite": False}),
    "majority_voting": ({"majority_voting": True, "over_clustering": "cell_type"}, {"majority_voting": False}),
    "over_clustering": ({"majority_voting": True, "over_clustering": "cell_type"}, {"over_clustering": "nope"}),
}


def _spied_pipeline(folder, monkeypatch, seen, **options):
    """A pipeline that records in `seen` the batches its model runs, its compile choices and its progress bars."""
    annotate = pipeline("cell-annotation", model=str(folder), trust_remote_code=True, **options)
    forward = annotate.model.forward

    def counted_forward(*args, **kwargs):
        seen["batches"].append(len(args[0] if args else kwargs["gene_ids"]))
        return forward(*args, **kwargs)

    monkeypatch.setattr(annotate.model, "forward", counted_forward)
    monkeypatch.setattr(annotate.model.model, "compile_backbone", lambda enable=True: seen["compile"].append(enable))
    module = sys.modules[type(annotate).__module__]
    monkeypatch.setattr(module, "tqdm", lambda steps, **kwargs: seen["progress"].append(len(steps)) or steps)
    return annotate


def _what_a_call_shows(annotate, adata, seen, **options):
    """The results of `annotate(adata, **options)`, what it wrote, and what `seen` recorded; or its error."""
    for records in seen.values():
        records.clear()
    given = adata.copy()
    try:
        results = annotate(given, **options)
    except ValueError as error:
        return str(error)
    annotated = results.adata
    return {"labels": [r["label"] for r in results], "scores": [r["score"] for r in results],
            "top_k": [len(r["top_k"]) for r in results], "genes": [len(r.get("genes", ())) for r in results],
            "votes": [r.get("majority_voting") for r in results], "in_place": annotated is given,
            "obs": sorted(annotated.obs.columns), "obsm": sorted(annotated.obsm), "uns": sorted(annotated.uns),
            **{name: list(records) for name, records in seen.items()}}


@pytest.mark.parametrize("option", OPTIONS)
def test_an_option_given_at_construction_holds_for_every_call_that_does_not_give_its_own(
        saved_tiny_model, adata, monkeypatch, option):
    at_construction, at_call = OPTIONS[option]
    adata.layers["counts"], adata.layers["zeros"] = adata.X.copy(), np.zeros_like(adata.X)
    seen = {"batches": [], "compile": [], "progress": []}
    plain = _spied_pipeline(saved_tiny_model, monkeypatch, seen)
    constructed = _spied_pipeline(saved_tiny_model, monkeypatch, seen, **at_construction)
    shown = _what_a_call_shows(constructed, adata, seen)
    assert shown == _what_a_call_shows(plain, adata, seen, **at_construction)
    assert shown != _what_a_call_shows(plain, adata, seen)
    # The call's own options win over the construction's.
    overridden = _what_a_call_shows(constructed, adata, seen, **at_call)
    assert overridden == _what_a_call_shows(plain, adata, seen, **{**at_construction, **at_call}) != shown



@pytest.mark.parametrize("kind", ["anndata", "matrix", "one cell"])
def test_explain_names_the_genes_that_drove_each_label(annotate, adata, counts, kind):
    inputs = {"anndata": (adata,), "matrix": (counts, GENES), "one cell": (dict(zip(GENES, counts[0])),)}[kind]
    results = annotate(*inputs, explain=3) if kind != "matrix" else annotate(inputs[0], gene_names=GENES, explain=3)
    for result in results:
        genes = result["genes"]
        assert len(genes) == 3 and all(g["gene"] in GENES for g in genes)
        assert [g["attribution"] for g in genes] == sorted((g["attribution"] for g in genes), reverse=True)
    if kind == "anndata":
        table = results.adata.obsm["scinterpreter_genes"]
        assert list(table.columns[:3]) == ["gene_1", "gene_2", "gene_3"] and list(table.index) == list(adata.obs_names)
        assert table["gene_1"].tolist() == [r["genes"][0]["gene"] for r in results]


def test_explain_false_adds_no_genes(annotate, counts):
    assert "genes" not in annotate(counts, gene_names=GENES, explain=False)[0]


def test_driver_genes_summarise_each_types_explanations_as_table_and_dot_plot(annotate, adata, tmp_path):
    from scinterpreter.explain import driver_genes, plot_driver_genes

    annotated = annotate(adata, explain=2).adata
    summary = driver_genes(annotated)
    assert set(summary["cell_type"]) == set(annotated.obs["scinterpreter"].astype(str))
    assert summary["n_cells"].sum() == 2 * annotated.n_obs and summary["fraction"].between(0, 1).all()
    plot_driver_genes(summary, tmp_path / "drivers.png")
    assert (tmp_path / "drivers.png").stat().st_size > 0


def test_majority_vote_gives_each_cluster_its_most_frequent_label():
    from pipeline_scinterpreter import majority_vote

    labels = ["B", "T", "T", "B", "NK", "NK", "B"]
    clusters = [0, 0, 0, 1, 1, 2, 2]
    # cluster 1 ties B and NK: the label met first wins
    assert majority_vote(labels, clusters) == ["T", "T", "T", "B", "B", "NK", "NK"]


@pytest.mark.parametrize("kind", ["anndata", "matrix", "one cell"])
def test_majority_voting_labels_every_cell_with_its_clusters_majority(annotate, adata, counts, kind):
    pytest.importorskip("scanpy")
    pytest.importorskip("igraph")
    if kind == "anndata":
        results = annotate(adata, majority_voting=True)
        obs = results.adata.obs
        assert obs["scinterpreter_majority_voting"].tolist() == [r["majority_voting"] for r in results]
        for cluster, members in obs.groupby("scinterpreter_over_clustering", observed=True):
            assert members["scinterpreter_majority_voting"].nunique() == 1
            voted = members["scinterpreter_majority_voting"].iloc[0]
            assert (members["scinterpreter"] == voted).sum() == members["scinterpreter"].value_counts().max()
        assert "leiden" in results.adata.uns["scinterpreter"]["over_clustering"]
        assert "scinterpreter_majority_voting" not in adata.obs
    elif kind == "matrix":
        results = annotate(counts, gene_names=GENES, majority_voting=True)
        assert all(r["majority_voting"] in {x["label"] for x in results} for r in results)
    else:
        results = annotate(dict(zip(GENES, counts[0])), majority_voting=True)
        assert results[0]["majority_voting"] == results[0]["label"]


def test_majority_voting_in_the_users_clusters(annotate, adata):
    adata.obs["louvain"] = ["a"] * (adata.n_obs - 1) + ["b"]
    obs = annotate(adata, majority_voting=True, over_clustering="louvain").adata.obs
    assert obs["scinterpreter_majority_voting"].iloc[-1] == obs["scinterpreter"].iloc[-1]
    assert obs["scinterpreter_majority_voting"].iloc[:-1].nunique() == 1
    assert obs["scinterpreter_over_clustering"].tolist() == adata.obs["louvain"].tolist()


def _with_config(folder, **changes):
    import json

    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return pipeline("cell-annotation", model=str(folder), trust_remote_code=True)


@pytest.mark.parametrize("score", ["max_probability", "energy"])
def test_auto_threshold_flags_the_cells_below_the_fitted_confidence(saved_tiny_model, tiny_model, processor, counts,
                                                                      adata, score):
    logits = tiny_model(**processor(counts, gene_names=GENES)).logits.detach().float()
    temperature = 2.0
    confidence = ((logits / temperature).softmax(-1).max(-1).values if score == "max_probability"
                  else temperature * torch.logsumexp(logits / temperature, -1)).numpy()
    cut = float(np.median(confidence))
    annotate = _with_config(saved_tiny_model, calibration_temperature=temperature, unassigned_threshold=cut,
                            unassigned_score=score)
    expected = confidence < cut
    assert 0 < expected.sum() < len(counts)
    for results in (annotate(counts, gene_names=GENES, threshold="auto"), annotate(adata, threshold="auto")):
        assert [r["label"] == "Unassigned" for r in results] == expected.tolist()
    record = annotate(adata, threshold="auto").adata.uns["scinterpreter"]
    assert record["threshold"] == "auto" and record["unassigned_threshold"] == pytest.approx(cut)
    assert record["unassigned_score"] == score
    one_cell = annotate(dict(zip(GENES, counts[int(np.argmin(confidence))].tolist())), threshold="auto")
    assert one_cell[0]["label"] == "Unassigned"


@pytest.mark.parametrize("score", ["centroid_distance", "max_probability_and_centroid_distance"])
def test_auto_threshold_on_centroid_distance_flags_the_cells_far_from_every_centroid(tmp_path, tiny_model, processor,
                                                                                     counts, adata, score):
    from scinterpreter.build import save_model_folder

    outputs = tiny_model(**processor(counts, gene_names=GENES))
    embeddings = outputs.cell_embeddings.detach()
    tiny_model.set_cell_type_centroids(embeddings[:6], torch.arange(6) % len(LABELS))
    # The expected score, computed here from its definition: cosine similarity to the nearest centroid.
    unit = torch.nn.functional.normalize(embeddings, dim=-1)
    centroids = torch.nn.functional.normalize(tiny_model.cell_type_centroids, dim=-1)
    similarity = (unit @ centroids.T).max(-1).values.numpy()
    cut = float(np.median(similarity))
    folder = save_model_folder(tiny_model, processor, tmp_path / "model")
    if score == "centroid_distance":
        annotate = _with_config(folder, unassigned_threshold=cut, unassigned_score=score)
        expected = similarity < cut
    else:  # either the probability (temperature 1) or the similarity under its own threshold
        annotate = _with_config(folder, unassigned_threshold=0.0, unassigned_score=score,
                                centroid_similarity_threshold=0.0)
        # The loaded model's own outputs: its reloaded backbone moves the tiny model's near-equal scores by ~1e-4.
        loaded = annotate.model(**annotate.processor(counts, gene_names=GENES, return_tensors="pt"))
        probability = loaded.logits.detach().float().softmax(-1).max(-1).values.numpy()
        unit = torch.nn.functional.normalize(loaded.cell_embeddings.detach(), dim=-1)
        similarity = (unit @ centroids.T).max(-1).values.numpy()
        probability_cut, similarity_cut = (float(np.quantile(values, 0.25)) for values in (probability, similarity))
        annotate.model.config.unassigned_threshold = probability_cut
        annotate.model.config.centroid_similarity_threshold = similarity_cut
        expected = (probability < probability_cut) | (similarity < similarity_cut)
        # Cells flagged by only one of the two: the union is tested, not either score alone.
        assert ((probability < probability_cut) & (similarity >= similarity_cut)).any()
        assert ((probability >= probability_cut) & (similarity < similarity_cut)).any()
    assert 0 < expected.sum() < len(counts)
    for results in (annotate(counts, gene_names=GENES, threshold="auto"), annotate(adata, threshold="auto")):
        assert [r["label"] == "Unassigned" for r in results] == expected.tolist()
    record = annotate(adata, threshold="auto").adata.uns["scinterpreter"]
    assert record["unassigned_score"] == score
    assert record.get("centroid_similarity_threshold") == (None if score == "centroid_distance" else similarity_cut)
    # A number as threshold is still a probability.
    assert not any(r["label"] == "Unassigned" for r in annotate(counts, gene_names=GENES))


def test_refit_reference_annotates_as_a_processor_fitted_on_the_given_cells(tmp_path, tiny_model):
    from scinterpreter.build import save_model_folder
    from processing_scinterpreter import ScInterpreterProcessor

    from conftest import make_counts

    training, batch = make_counts(60, seed=1), make_counts(60, seed=2) * np.linspace(0.2, 3, len(GENES))
    fitted = ScInterpreterProcessor(gene_vocab=GENES, n_top_genes=8, gene_selection="excess").fit(training,
                                                                                                   gene_names=GENES)
    folder = save_model_folder(tiny_model, fitted, tmp_path / "model")
    annotate = pipeline("cell-annotation", model=str(folder), trust_remote_code=True)

    def genes_shown(processor):
        inputs = processor(batch, gene_names=GENES, return_tensors="np")
        return [{GENES[i] for i, kept in zip(ids, mask) if kept} for ids, mask in
                zip(inputs["gene_ids"], inputs["gene_mask"])]

    # explain=8 lists every one of a cell's 8 soft-token genes: the genes the model was shown.
    shown = lambda results: [{gene["gene"] for gene in result["genes"]} for result in results]  # noqa: E731
    refitted = ScInterpreterProcessor(gene_vocab=GENES, n_top_genes=8, gene_selection="excess").fit(batch,
                                                                                                     gene_names=GENES)
    assert shown(annotate(batch, gene_names=GENES, refit_reference=True, explain=8)) == genes_shown(refitted)
    assert shown(annotate(batch, gene_names=GENES, explain=8)) == genes_shown(fitted) != genes_shown(refitted)
    # The pipeline's own processor keeps the training reference.
    assert annotate.processor.reference_means == fitted.reference_means


def test_a_model_whose_linear_gene_scores_read_a_longer_gene_list_annotates_and_explains(tmp_path, counts):
    from conftest import make_tiny_model

    from processing_scinterpreter import ScInterpreterInputError, ScInterpreterProcessor
    from scinterpreter.build import save_model_folder

    model = make_tiny_model(linear_gene_scores=True)
    processor = ScInterpreterProcessor(gene_vocab=GENES, n_top_genes=8, n_linear_genes=20)
    # A gene that the first cell's longer list holds but its soft tokens do not, weighted heavily (alike for every
    # label, so that no call changes): the explanations must name it first, with its exact term.
    first = processor(counts[:1], gene_names=GENES)
    read_only_linearly = int(first["linear_gene_ids"][0, first["linear_gene_mask"][0].bool()][-1])
    torch.manual_seed(5)
    weights = torch.randn(len(GENES), len(LABELS))
    weights[read_only_linearly] = 50.0
    model.set_linear_gene_scores(weights, torch.randn(len(LABELS)))
    folder = save_model_folder(model, processor, tmp_path / "linear-model")
    annotate = pipeline("cell-annotation", model=str(folder), trust_remote_code=True)
    results = annotate(counts, gene_names=GENES, explain=3)
    inputs = processor(counts, gene_names=GENES)
    with torch.no_grad():
        expected = model(**inputs).logits.softmax(-1)  # the longer list's scores included
    np.testing.assert_allclose(results.probabilities, expected.numpy(), atol=1e-5)
    assert all(len(r["genes"]) == 3 for r in results)
    for cell, result in enumerate(results):
        real = inputs["linear_gene_mask"][cell].bool()
        listed = dict(zip(inputs["linear_gene_ids"][cell][real].tolist(),
                          inputs["linear_gene_values"][cell][real].tolist()))
        if read_only_linearly in listed and read_only_linearly not in inputs["gene_ids"][cell].tolist():
            assert result["genes"][0]["gene"] == GENES[read_only_linearly]
            assert result["genes"][0]["attribution"] == pytest.approx(50.0 * listed[read_only_linearly], rel=1e-5)
    assert results[0]["genes"][0]["gene"] == GENES[read_only_linearly]
    tokens_only = {name: tensor for name, tensor in inputs.items() if not name.startswith("linear_")}
    model.config.n_linear_input_genes = 20  # as fitting on the longer list sets it: the model then asks for the list
    with pytest.raises(ScInterpreterInputError, match="linear_gene_ids"):
        model(**tokens_only)


def test_a_model_whose_linear_gene_scores_read_a_panel_annotates_with_the_saved_panel(tmp_path):
    from conftest import make_counts, make_tiny_model

    from processing_scinterpreter import ScInterpreterProcessor
    from scinterpreter.build import save_model_folder

    model = make_tiny_model(linear_gene_scores=True)
    torch.manual_seed(6)
    model.set_linear_gene_scores(torch.randn(len(GENES), len(LABELS)), torch.randn(len(LABELS)))
    processor = ScInterpreterProcessor(gene_vocab=GENES, n_top_genes=8, n_linear_genes=12,
                                       linear_gene_selection="variable").fit(make_counts(), gene_names=GENES)
    cells = make_counts(60, seed=3)  # enough for refit_reference
    folder = save_model_folder(model, processor, tmp_path / "panel-model")
    annotate = pipeline("cell-annotation", model=str(folder), trust_remote_code=True)
    for refit_reference in (False, True):  # refitting the reference on these cells keeps the panel
        results = annotate(cells, gene_names=GENES, refit_reference=refit_reference)
        fitted = (ScInterpreterProcessor.from_pretrained(folder).fit(cells, gene_names=GENES)
                  if refit_reference else processor)
        assert fitted.linear_gene_panel == processor.linear_gene_panel
        with torch.no_grad():
            expected = model(**fitted(cells, gene_names=GENES)).logits.softmax(-1)
        np.testing.assert_allclose(results.probabilities, expected.numpy(), rtol=1e-4, atol=1e-5)
    one_cell = annotate(dict(zip(GENES, cells[0])))  # a single cell: its own, narrower list
    with torch.no_grad():
        expected = model(**processor(cells[:1], gene_names=GENES)).logits.softmax(-1)
    np.testing.assert_allclose(one_cell.probabilities, expected.numpy(), rtol=1e-4, atol=1e-5)
