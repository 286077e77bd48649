"""Streaming annotation of .h5ad files: chunked, incremental, resumable without redoing or losing cells."""

import json

import numpy as np
import pytest
from conftest import GENES, LABELS, make_counts

from scinterpreter.annotate import annotate_h5ad, main, read_annotations


@pytest.fixture
def h5ad(tmp_path):
    import anndata
    import pandas as pd

    counts = make_counts(n_cells=50, seed=4)
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(50)])
    path = tmp_path / "cells.h5ad"
    anndata.AnnData(counts, obs=obs, var=pd.DataFrame(index=GENES)).write_h5ad(path)
    return path


def test_streamed_results_match_the_in_memory_pipeline(h5ad, saved_tiny_model, tmp_path):
    from transformers import pipeline

    import anndata

    summary = annotate_h5ad(h5ad, saved_tiny_model, tmp_path / "out", chunk_size=8)
    assert summary["n_done"] == 50 and summary["cells_annotated_now"] == 50
    cells, labels, scores, embeddings = read_annotations(tmp_path / "out")
    annotate = pipeline("cell-annotation", model=str(saved_tiny_model), trust_remote_code=True)
    expected = annotate(anndata.read_h5ad(h5ad))
    assert list(cells) == [f"cell{i}" for i in range(50)]
    assert list(labels) == [r["label"] for r in expected]
    np.testing.assert_allclose(scores, [r["score"] for r in expected], atol=1e-5)
    np.testing.assert_allclose(embeddings, expected.embeddings, atol=1e-5)


def test_a_pipeline_keeps_the_options_it_was_built_with(h5ad, saved_tiny_model, tmp_path):
    from transformers import pipeline

    from scinterpreter.annotate import read_probabilities

    strict = pipeline("cell-annotation", model=str(saved_tiny_model), trust_remote_code=True, threshold=0.99)
    annotate_h5ad(h5ad, strict, tmp_path / "strict", chunk_size=25)
    _, labels, scores, _ = read_annotations(tmp_path / "strict")
    assert read_probabilities(tmp_path / "strict")[2]["threshold"] == 0.99
    assert set(labels[scores < 0.99]) == {"Unassigned"} and len(labels[scores < 0.99]) > 0
    annotate_h5ad(h5ad, strict, tmp_path / "named", chunk_size=25, threshold=0.0)  # a named option wins
    assert "Unassigned" not in set(read_annotations(tmp_path / "named")[1])


def test_an_interrupted_run_resumes_without_redoing_or_losing_cells(h5ad, saved_tiny_model, tmp_path):
    out = tmp_path / "out"
    first = annotate_h5ad(h5ad, saved_tiny_model, out, chunk_size=8, max_chunks=3)
    assert first["cells_annotated_now"] == 24
    # A kill in the middle of chunk 3: its files are half-written and progress.json still says 3 chunks.
    (out / "chunk_00003.tsv").write_text("cell\tlabel\tscore\ncell24\tgarbage\t0.1\n")
    (out / "chunk_00003.safetensors").write_bytes(b"partial")
    second = annotate_h5ad(h5ad, saved_tiny_model, out, chunk_size=8)
    assert second["cells_annotated_now"] == 26  # only the cells not finished before
    cells, labels, _, embeddings = read_annotations(out)
    assert list(cells) == [f"cell{i}" for i in range(50)] and "garbage" not in set(labels)
    reference = annotate_h5ad(h5ad, saved_tiny_model, tmp_path / "reference", chunk_size=8)
    assert reference["n_done"] == 50
    assert list(labels) == list(read_annotations(tmp_path / "reference")[1])
    assert embeddings.shape == (50, 32)


@pytest.mark.parametrize("written_by", ["another run", "an older format", "the first format"])
def test_a_folder_it_cannot_resume_is_refused_for_its_reason_and_left_as_it_was(written_by, h5ad, saved_tiny_model,
                                                                                tmp_path):
    from processing_scinterpreter import ScInterpreterInputError
    from scinterpreter.annotate import CHUNK_FORMAT

    out = tmp_path / "out"
    annotate_h5ad(h5ad, saved_tiny_model, out, chunk_size=8, max_chunks=2)
    progress = json.loads((out / "progress.json").read_text())
    if written_by == "an older format":
        progress["format"] = CHUNK_FORMAT - 1
    elif written_by == "the first format":
        del progress["format"]  # it wrote no number
    (out / "progress.json").write_text(json.dumps(progress))
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    message = "results of another run" if written_by == "another run" else (
        f"older scInterpreter \\(chunk format {progress.get('format', 1)}, this version writes {CHUNK_FORMAT}\\)")
    with pytest.raises(ScInterpreterInputError, match=message):
        annotate_h5ad(h5ad, saved_tiny_model, out, chunk_size=16 if written_by == "another run" else 8)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_command_line_writes_an_annotated_copy(h5ad, saved_tiny_model, tmp_path):
    import anndata

    target = tmp_path / "annotated.h5ad"
    main([str(h5ad), "--model", str(saved_tiny_model), "--out", str(tmp_path / "out"), "--chunk_size", "16",
          "--write_h5ad", str(target)])
    annotated = anndata.read_h5ad(target)
    assert annotated.obs["scinterpreter"].notna().all() and annotated.obsm["X_scinterpreter"].shape == (50, 32)
    # the same record the pipeline writes for an AnnData in memory
    probabilities = annotated.obsm["scinterpreter_probabilities"]
    assert probabilities.shape == (50, len(LABELS)) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    labels = list(annotated.uns["scinterpreter"]["labels"])
    assert [labels[i] for i in probabilities.argmax(1)] == annotated.obs["scinterpreter"].tolist()
    assert annotated.uns["scinterpreter"]["model"] == str(saved_tiny_model)
    assert "scinterpreter" not in anndata.read_h5ad(h5ad).obs  # the input file is left as it was
    assert json.loads((tmp_path / "out" / "progress.json").read_text())["chunks_done"] == 4


def test_the_annotated_copy_records_in_uns_what_the_pipeline_records_in_memory(h5ad, saved_tiny_model, tmp_path):
    import anndata
    from transformers import pipeline

    from scinterpreter.annotate import write_annotated_h5ad

    # A calibrated model with a fitted Unassigned threshold, so that every entry of the record is filled.
    config = json.loads((saved_tiny_model / "config.json").read_text())
    (saved_tiny_model / "config.json").write_text(json.dumps({**config, "calibration_temperature": 2.0,
                                                              "unassigned_threshold": 0.4}))
    annotate = pipeline("cell-annotation", model=str(saved_tiny_model), trust_remote_code=True, threshold="auto")
    annotate_h5ad(h5ad, annotate, tmp_path / "out", chunk_size=16)
    write_annotated_h5ad(h5ad, tmp_path / "out", tmp_path / "annotated.h5ad")
    streamed = anndata.read_h5ad(tmp_path / "annotated.h5ad").uns["scinterpreter"]
    in_memory = annotate(anndata.read_h5ad(h5ad)).adata.uns["scinterpreter"]
    # What .h5ad gives back (numpy strings, arrays, bools) compared as plain Python values.
    plain = lambda record: {key: np.asarray(value).tolist() for key, value in record.items()}  # noqa: E731
    assert plain(streamed) == plain(in_memory)
    assert in_memory["unassigned_threshold"] == 0.4 and in_memory["calibrated"]
    assert "matched the model's vocabulary" in in_memory["gene_match"]


@pytest.mark.slow
def test_large_files_compile_the_backbone_and_older_pipelines_still_work(h5ad, saved_tiny_model, tmp_path, caplog):
    from transformers import pipeline

    annotate = pipeline("cell-annotation", model=str(saved_tiny_model), trust_remote_code=True)
    annotate.compile_min_cells = 50  # this 50-cell file counts as large
    calls = []

    class OlderPipeline:  # the pipeline code of a model folder saved before compile_backbone existed
        compile_min_cells = 50
        model, processor = annotate.model, annotate.processor

        def __call__(self, rows, gene_names, batch_size, threshold, show_progress):
            calls.append(len(rows))
            return annotate(rows, gene_names=gene_names, batch_size=batch_size, threshold=threshold,
                            show_progress=show_progress, compile_backbone=False)

    with caplog.at_level("WARNING"):
        annotate_h5ad(h5ad, OlderPipeline(), tmp_path / "older", chunk_size=25)
    assert calls == [25, 25] and "predates compile_backbone" in caplog.text
    annotate_h5ad(h5ad, annotate, tmp_path / "compiled", chunk_size=25, batch_size=16)
    assert annotate.model.model.is_backbone_compiled
    uncompiled, compiled = read_annotations(tmp_path / "older"), read_annotations(tmp_path / "compiled")
    assert list(uncompiled[1]) == list(compiled[1])
    np.testing.assert_allclose(uncompiled[3], compiled[3], rtol=0.05, atol=0.05)


def test_a_layer_is_streamed_and_the_annotated_copy_written_without_reading_the_file_whole(
        tmp_path, saved_tiny_model, monkeypatch):
    import anndata
    import pandas as pd
    from scipy import sparse
    from transformers import pipeline

    counts = make_counts(n_cells=40, seed=5)
    source = anndata.AnnData(np.log1p(counts), obs=pd.DataFrame({"donor": ["a", "b"] * 20},
                                                                index=[f"c{i}" for i in range(40)]),
                             var=pd.DataFrame(index=GENES), layers={"counts": sparse.csr_matrix(counts)},
                             obsm={"X_pca": np.ones((40, 2), np.float32)}, uns={"mine": "kept"})
    path = tmp_path / "cells.h5ad"
    source.write_h5ad(path)
    expected = pipeline("cell-annotation", model=str(saved_tiny_model), trust_remote_code=True)(source,
                                                                                                 layer="counts")

    def whole_file(*args, **kwargs):
        raise AssertionError("anndata.read_h5ad reads every layer whole: the streamed path must not call it")

    monkeypatch.setattr(anndata, "read_h5ad", whole_file)
    target = tmp_path / "annotated.h5ad"
    main([str(path), "--model", str(saved_tiny_model), "--out", str(tmp_path / "out"), "--chunk_size", "16",
          "--layer", "counts", "--write_h5ad", str(target)])
    monkeypatch.undo()
    annotated = anndata.read_h5ad(target)
    assert annotated.obs["scinterpreter"].tolist() == [r["label"] for r in expected]
    np.testing.assert_allclose(annotated.obsm["scinterpreter_probabilities"], expected.probabilities, atol=1e-5)
    np.testing.assert_allclose(annotated.obsm["X_scinterpreter"], expected.embeddings, atol=1e-5)
    # Everything that was there is there unchanged.
    np.testing.assert_array_equal(annotated.X, source.X)
    np.testing.assert_array_equal(annotated.layers["counts"].toarray(), counts)
    assert annotated.obs["donor"].tolist() == source.obs["donor"].tolist() and annotated.uns["mine"] == "kept"
    np.testing.assert_array_equal(annotated.obsm["X_pca"], source.obsm["X_pca"])
