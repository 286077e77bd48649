"""The benchmark reports: rendered from their JSON alone, every figure from it, and the shared predict / score."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_tiny_model

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"
REPORTS = REPO / "docs" / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))


def benchmark(name):
    """A benchmark script as a module (nothing runs: each script's work is under `main`)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The scripts that render a report from its JSON: script -> the checked-in reports it renders.
RENDERED = {"gene_encoders": ["gene_encoders"], "scale": ["scale", "scale_default_depth"], "speed": ["speed"],
            "cross_species": ["cross_species"], "unknown_types": ["unknown_types"], "seed_ensemble": ["seed_ensemble"]}


@pytest.mark.parametrize("script,report", [(s, r) for s, reports in RENDERED.items() for r in reports])
def test_checked_in_reports_are_rendered_from_their_json(script, report):
    saved = json.loads((REPORTS / f"{report}.json").read_text())
    assert benchmark(script).render(saved) == (REPORTS / f"{report}.md").read_text()


def gene_encoder_report(**meta):
    records = [{"dataset": "d", "split": split, "encoder": encoder, "accuracy": 0.5, "macro_f1": 0.25}
               for split in ("fixed", "lobo_x") for encoder in ("wordllama", "random")]
    neighbours = {encoder: {"CD3E": ["CD3G", "CD3D"]} for encoder in ("wordllama", "random")}
    return {"meta": {"date": "2000-01-01", "machine": "m", "vocabulary": 1234, "encode_seconds": {"wordllama": 7.2},
                     **meta}, "neighbours": neighbours, "genept_w": records}


def test_gene_encoder_report_says_what_its_json_does_not_record():
    text = benchmark("gene_encoders").render(gene_encoder_report())
    assert "CPU cores not recorded" in text and "max_iter" not in text and "1,231" not in text
    text = benchmark("gene_encoders").render(gene_encoder_report(cpu_cores=3, max_iter=11, command="python x.py --y"))
    assert "3 CPU cores" in text and "max_iter 11" in text and "`python x.py --y`" in text
    assert "1,234 genes" in text and "wordllama 7 s" in text and "Nearest 2 neighbours" in text


def scale_report(**fields):
    record = {"n_cells": 5000, "annotated_cells": 4096, "file_gb": 0.1, "write_seconds": 1.0, "annotate_seconds": 2.0,
              "cells_per_s": 9.5, "peak_rss_mb": 123.4, "estimated_hours_for_all": 0.01}
    return {"date": "2000-01-01", "layers": 3, "chunk_size": 1024, "records": [record], **fields}


def test_scale_report_takes_cores_genes_and_command_from_its_json():
    render = benchmark("scale").render
    text = render(scale_report())
    assert "CPU cores not recorded" in text and "gene count not recorded" in text
    assert "command line not recorded" in text and "compilation not recorded" in text
    assert "2 CPU cores" not in text and "20,125" not in text
    text = render(scale_report(cpu_cores=5, n_genes=777, compile_backbone=True,
                               command="python benchmarks/scale.py -q"))
    assert "5 CPU cores" in text and "(777 genes)" in text and "under torch.compile" in text
    assert "`python benchmarks/scale.py -q` on 2000-01-01" in text and "| 5,000 | 4,096 |" in text


def speed_run(layers, peaks, rates, **fields):
    return {"layers": layers, "n_top_genes": 8, "flops_per_cell": 2e9, "compile_seconds": 1.0,
            "inference_by_batch_size": {"8": 10.0, "32": 12.0},
            "rounds": {"peak": peaks, "compiled": rates, "eager": rates},
            "inference_cells_per_s": 10.0, "peak_fraction": 0.5, "eager_inference_cells_per_s": 9.0,
            "eager_peak_fraction": 0.4, "training_cells_per_s": 3.0, "naive_fp32_cells_per_s": 5.0,
            "speedup_over_naive_fp32": 2.0, "eager_speedup_over_naive_fp32": 1.8, **fields}


def test_speed_report_computes_batches_matrix_size_and_drift_from_its_json():
    from pipeline_scinterpreter import COMPILE_MIN_CELLS

    module = benchmark("speed")
    base = {"date": "2000-01-01", "cpu": "c", "threads": 3, "flags": ["avx2"], "chosen_backbone_dtype": "float32",
            "matmul_flops": {"float32": 2e11, "bfloat16": 1e11}}
    recorded = {**base, "command": "python benchmarks/speed.py --rounds 2", "matmul_size": 512,
                "runs": [speed_run(2, [1e11, 1.2e11], [10.0, 15.0], train_batch_size=4, naive_batch_size=32)]}
    text = module.render(recorded)
    assert "faster of batch 8 and 32" in text and "training at batch 4" in text and "naive fp32 at batch 32" in text
    assert "512 x 512" in text and "in 2 rounds" in text and "float32 peak" in text
    assert "peak moved by 18%" in text and "up to 40%" in text  # (1.2 - 1) / 1.1 and (15 - 10) / 12.5
    assert f"from {COMPILE_MIN_CELLS:,} cells" in text
    for literal in ("2048", "~10%", "16 and 64", "batch 16", "--seconds 20"):
        assert literal not in text
    text = module.render({**base, "runs": [speed_run(2, [1e11, 1e11], [10.0, 10.0])]})
    assert "command line not recorded" in text and "matrix size not recorded" in text
    assert "training at a batch size not recorded" in text


def unknown_types_report(**fields):
    scores = {"auroc": 0.9, "left_out_flagged": 0.5, "known_flagged": 0.1}
    run = {"dataset": "d", "left_out": "t", "seed": 3, "n_left_out": 7, "known_test_accuracy": 0.8,
           "scores": {"energy": scores}}
    return {"date": "2000-01-01", "command": "python benchmarks/unknown_types.py --seed 3", "runs": [run],
            "mean": {"energy": scores}, **fields}


def test_unknown_types_report_prints_the_recorded_seed_and_rate():
    from scinterpreter.calibration import UNASSIGNED_RATE

    render = benchmark("unknown_types").render
    text = render(unknown_types_report(unassigned_rate=0.1))
    assert "(seed 3)" in text and "at most 10% of them" in text and "seed 0" not in text and "5%" not in text
    text = render(unknown_types_report())
    assert f"{UNASSIGNED_RATE:.0%} in the product now" in text and "does not record the rate" in text


def test_cross_species_report_reads_old_and_new_json():
    render = benchmark("cross_species").render
    record = {"source": "a", "target": "b", "source_test": {"accuracy": 0.9, "macro_f1": 0.8},
              "target_genes_matched": "9/10 genes", "shared_types": ["x", "y"], "n_target_cells_scored": 1500,
              "n_target_cells": 2000, "accuracy": 0.6, "macro_f1": 0.5,
              "target_reference": {"accuracy": 0.7, "macro_f1": 0.65},
              "logistic_regression": {"shared_genes": 4321, "accuracy": 0.8, "macro_f1": 0.6}}
    text = render([record])
    assert "not recorded in this JSON" in text and "1,500 of 2,000" in text and "**0.700 / 0.650**" in text
    assert "0.800 / 0.600 (4,321)" in text and "labels compared case-insensitively: x, y" in text
    meta = {"date": "2000-01-01", "command": "python benchmarks/cross_species.py --seed 4", "machine": "m",
            "backbone_dtype": "bfloat16", "seed": 4, "epochs": 2}
    text = render({"meta": meta, "records": [record]})
    assert "`python benchmarks/cross_species.py --seed 4` on 2000-01-01" in text and "seed 4, 2 epochs" in text


def test_score_is_accuracy_and_macro_f1_over_the_given_labels():
    from splits import score

    assert score(["a", "b", "a", "c"], ["a", "a", "a", "c"]) == {"accuracy": 0.75, "macro_f1": 0.6}
    # only the types both sides know: "c" (never predicted nor present among them) counts 0 when named
    assert score(["a", "b"], ["a", "b"], labels=["a", "b", "c"]) == {"accuracy": 1.0, "macro_f1": 0.6667}


def test_predict_gives_the_same_outputs_in_batches_as_in_one_pass():
    from splits import predict

    model = make_tiny_model()
    generator = torch.Generator().manual_seed(0)
    inputs = {"gene_ids": torch.randint(0, model.config.gene_vocab_size, (5, 8), generator=generator),
              "gene_values": torch.rand(5, 8, generator=generator), "gene_mask": torch.ones(5, 8, dtype=torch.long)}
    logits, embeddings = predict(model, inputs, batch_size=2)
    with torch.inference_mode():
        outputs = model(**inputs)
    assert logits.shape == (5, len(model.config.id2label)) and embeddings.shape[0] == 5
    torch.testing.assert_close(logits, outputs.logits.float())
    torch.testing.assert_close(embeddings, outputs.cell_embeddings.float())


def test_no_render_function_prints_a_machine_literal():
    """Core and gene counts, seeds, rates and the compile threshold come from the JSON or the product, not the text."""
    import inspect

    for name in RENDERED:
        source = inspect.getsource(benchmark(name).render)
        for literal in (r"\b\d+ (CPU )?cores\b", r"\b20,000\b", r"~\d+%", r"\(seed \d", r"(?<![.\d])\d+%", r"2048",
                        r"\b\d{2},\d{3} genes\b"):
            assert not re.search(literal, source), (name, literal)


def test_runs_are_named_by_how_their_saved_recipe_differs_from_todays():
    from dataclasses import asdict

    from scinterpreter.recipe import Recipe

    name = benchmark("recipes").option_against_today
    today = asdict(Recipe())
    assert name({"recipe": today, "changes": {}}) == "default"
    # A field that changes no prediction, and a removed field at the value that is today's behaviour.
    assert name({"recipe": {**today, "calibrate": False, "class_weighting": "none"}, "changes": {}}) == "default"
    assert name({"recipe": {**today, "class_weighting": "inverse"}, "changes": {}}) == "class_weighting=inverse"
    assert name({"recipe": {**today, "cell_pooling": "mean"}, "changes": {"cell_pooling": "mean"}}) == "no_llm"
    assert name({"recipe": today, "changes": {"num_train_epochs": 24}}) == "ep24"
    older = {k: v for k, v in today.items() if k != "gene_dropout"}  # written before gene dropout existed
    assert name({"recipe": older, "changes": {}}) == ("default" if today["gene_dropout"] == 0 else "no_gene_dropout")
    assert name({"recipe": {**today, "n_top_genes": 100}, "changes": {}}) == "n_top_genes=100"
    with pytest.raises(ValueError, match="n_top_genes"):  # missing, and no record of what its absence meant
        name({"recipe": {k: v for k, v in today.items() if k != "n_top_genes"}, "changes": {}})


def test_a_run_of_an_older_default_is_not_taken_for_todays(tmp_path, monkeypatch):
    from dataclasses import asdict, replace

    from scinterpreter.recipe import Recipe

    recipes = benchmark("recipes")
    monkeypatch.setattr(recipes, "splits", lambda names: [("d", "fixed", "d.json", None)])
    out = tmp_path / "records.jsonl"
    older = {k: v for k, v in asdict(replace(Recipe(), lora_rank=8)).items() if k != "gene_dropout"}
    record = {"option": "lora8", "dataset": "d", "split": "fixed", "seed": 0, "changes": {"lora_rank": 8}}
    out.write_text(json.dumps({**record, "recipe": older}) + "\n")
    assert len(recipes.make_jobs(["lora8"], None, [0], skip_done=out)) == (1 if Recipe().gene_dropout else 0)
    today = asdict(replace(Recipe(), lora_rank=8))
    out.write_text(json.dumps({**record, "recipe": today}) + "\n")
    assert recipes.make_jobs(["lora8"], None, [0], skip_done=out) == []
    assert len(recipes.make_jobs(["lora8"], None, [0, 1], skip_done=out)) == 1


def test_seed_ensemble_averages_the_seeds_calibrated_probabilities(tmp_path):
    from safetensors.numpy import save_file

    seed_ensemble = benchmark("seed_ensemble")
    references = np.array([0, 1, 2, 0, 1, 2])
    for seed in range(3):  # each seed gets a different cell wrong, by a small margin; the other two outvote it
        logits = np.eye(3, dtype=np.float32)[references] * 2.0
        logits[seed, (references[seed] + 1) % 3] = 2.5
        save_file({"logits": logits, "references": references, "test_cells": np.arange(6)},
                  str(tmp_path / f"default__d__fixed__seed{seed}.safetensors"),
                  metadata={"labels": json.dumps(["a", "b", "c"]), "temperature": json.dumps(1.0 + seed)})
    runs = seed_ensemble.load_runs(tmp_path)
    probabilities = runs[("default", "d", "fixed")][1][0]
    assert np.allclose(probabilities[1].sum(), 1.0) and probabilities[1].max() < 0.5  # temperature 2 applied
    row = seed_ensemble.ensemble_scores(runs[("default", "d", "fixed")])
    assert row["single_accuracy"] == {0: round(5 / 6, 4), 1: round(5 / 6, 4), 2: round(5 / 6, 4)}
    assert row["ensemble_accuracy"] == 1.0 and row["ensemble_macro_f1"] == 1.0
    saved = {"meta": {"command": "c", "date": "2000-01-01"}, "rows": [{"option": "default", "dataset": "d",
                                                                       "split": "fixed", **row}],
             "best_logistic_regression": [{"dataset": "d", "split": "fixed", "macro_f1": 0.9}]}
    assert "| default | d | fixed | 0: 0.822, 1: 0.822, 2: 0.822 | 0.822 |" in seed_ensemble.render(saved)
    assert "+0.178 macro-F1" in seed_ensemble.render(json.loads(json.dumps(saved)))


def test_records_from_before_linear_gene_scores_keep_their_option_name():
    from dataclasses import asdict

    from recipes import option_against_today

    from scinterpreter.recipe import Recipe

    today = asdict(Recipe())
    before = {k: v for k, v in today.items() if k != "linear_gene_scores"}
    expected = "default" if not today["linear_gene_scores"] else "no_linear_genes"
    assert option_against_today({"recipe": before, "changes": {}}) == expected
    assert option_against_today({"recipe": {**today, "linear_gene_scores": not today["linear_gene_scores"]},
                                 "changes": {}}) == ("linear_genes" if not today["linear_gene_scores"]
                                                     else "no_linear_genes")


def test_records_from_before_the_longer_linear_gene_list_are_named_by_what_they_lack():
    from dataclasses import asdict

    from recipes import option_against_today

    from scinterpreter.recipe import Recipe

    today = asdict(Recipe())
    session14 = {k: v for k, v in today.items() if k not in ("n_linear_genes", "head_temperature",
                                                              "linear_gene_selection", "linear_class_balance",
                                                              "linear_gene_scale")}
    assert option_against_today({"recipe": session14, "changes": {}}) == \
        "linear_tokens_only+no_head_temperature+unweighted_linear"
    # Without linear gene scores, what they would read changes nothing.
    assert option_against_today({"recipe": {**session14, "linear_gene_scores": False}, "changes": {}}) == \
        "no_linear_genes"


def test_records_of_the_linear_gene_panel_are_the_default_and_session_15_records_are_named():
    from dataclasses import asdict

    from recipes import OPTIONS, option_against_today

    from scinterpreter.recipe import Recipe

    today = asdict(Recipe())
    assert option_against_today({"recipe": {**today, **OPTIONS["linear_panel"]}, "changes": {}}) == "default"
    session15 = {**{k: v for k, v in today.items()
                    if k not in ("linear_gene_selection", "linear_class_balance", "linear_gene_scale")},
                 "n_linear_genes": 1024}
    assert option_against_today({"recipe": session15, "changes": {}}) == "session15_linear"
    assert option_against_today({"recipe": {**today, "linear_gene_scale": 1.0}, "changes": {}}) == "linear_scale1"


def test_explanations_leave_a_gene_out_of_the_soft_tokens_and_of_the_longer_list():
    explanations = benchmark("explanations")
    inputs = {"gene_ids": torch.tensor([[3, 5, 7, 0]]), "gene_values": torch.tensor([[3.0, 2.0, 1.0, 0.0]]),
              "gene_mask": torch.tensor([[1, 1, 1, 0]]), "linear_gene_ids": torch.tensor([[3, 5, 7, 9, 11]]),
              "linear_gene_values": torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0]]),
              "linear_gene_mask": torch.tensor([[1, 1, 1, 1, 0]])}
    kept = explanations.without_genes(inputs, explanations.padded([[5, 9]], 3))
    assert kept["gene_ids"].tolist() == [[3, 7, 0, 5]] and kept["gene_mask"].tolist() == [[1, 1, 0, 0]]
    assert kept["gene_values"].tolist() == [[3.0, 1.0, 0.0, 2.0]]
    assert kept["linear_gene_mask"].tolist() == [[1, 0, 1, 0, 0]]


def test_temperature_probe_estimators_do_what_they_say():
    from scinterpreter.calibration import fit_temperature, softmax

    probe = benchmark("temperature_probe")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    logits = 4 * rng.normal(size=(60, 3))
    logits[np.arange(60), labels] += 6.0  # mostly right, and sure of it
    correct = (logits.argmax(-1) == labels).sum()
    matched = probe.accuracy_matched(logits, labels)
    assert softmax(logits, matched).max(-1).mean() == pytest.approx((correct + 1) / 62, abs=1e-6)
    # Every cell right: the likelihood wants the sharpest temperature allowed; the clamp keeps 1.
    labels = logits.argmax(-1)
    assert fit_temperature(logits, labels) < 0.1 and probe.ESTIMATORS["nll_at_least_1"](logits, labels) == 1.0
    assert probe.smoothed_nll(logits, labels) > 1.0  # smoothed labels never ask for certainty
