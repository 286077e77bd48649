"""`scinterpreter.training`: the recipe, validation cells, class-balanced sampling and `fit`."""

import numpy as np
import pytest
import torch
from conftest import make_tiny_backbone

from scinterpreter.training import (
    Recipe,
    ScInterpreterTrainingArguments,
    balanced_sample_weights,
    fit,
    validation_split,
)

MARKERS = {"T": ["CD3E", "CD3D"], "B": ["CD19", "MS4A1"], "beta": ["INS", "IAPP"], "rare": ["GCG", "TTR"]}
GENES = [g for names in MARKERS.values() for g in names] + ["ACTB", "GAPDH", "B2M", "MALAT1", "FTL", "TPT1"]


def marker_cells(counts=(30, 30, 30, 4), seed=0):
    rng = np.random.default_rng(seed)
    blocks, labels = [], []
    for (label, names), n in zip(MARKERS.items(), counts):
        block = rng.poisson(2.0, size=(n, len(GENES)))
        block[:, [GENES.index(g) for g in names]] += rng.poisson(30, size=(n, len(names)))
        block[:, GENES.index("ACTB")] += 60  # a gene every cell expresses most
        blocks.append(block)
        labels += [label] * n
    return np.concatenate(blocks).astype(np.float32), np.array(labels)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return make_tiny_backbone(tmp_path_factory.mktemp("backbone"))


def tiny_recipe(backbone, **changes):
    # The paper's head (class token only): these tests check fit's mechanics (epochs kept, checkpoints, centroids,
    # the Unassigned threshold) with bounds sized for it on a random 2-layer backbone. The default pooling (class
    # token and the genes' mean) is trained on the real backbone by tests/test_train.py's integration test.
    return Recipe(**{**dict(backbone=str(backbone), num_backbone_layers=0, gene_encoder="random", n_top_genes=4,
                            backbone_dtype="float32", cell_pooling="class_token"), **changes})


def tiny_args(tmp_path, **changes):
    values = dict(output_dir=str(tmp_path / "run"), num_train_epochs=8, learning_rate=3e-3,
                  per_device_train_batch_size=8, disable_tqdm=True)
    return ScInterpreterTrainingArguments(**{**values, **changes})


def test_validation_split_holds_out_a_share_of_each_type_and_keeps_rare_types_whole():
    labels = np.array(["a"] * 50 + ["b"] * 20 + ["c"] * 9)
    train, validation = validation_split(labels, 0.1, seed=0)
    assert sorted(labels[validation].tolist()) == ["a"] * 5 + ["b"] * 2
    assert not set(train) & set(validation) and len(train) + len(validation) == len(labels)
    np.testing.assert_array_equal(validation, validation_split(labels, 0.1, seed=0)[1])
    assert len(validation_split(labels, 0.0, seed=0)[1]) == 0


def test_balanced_sampling_weights_rare_types_up():
    label_ids = np.array([0] * 90 + [1] * 10)
    assert balanced_sample_weights(label_ids, 0.0) is None
    weights = balanced_sample_weights(label_ids, 1.0)
    assert weights[label_ids == 0].sum() == pytest.approx(weights[label_ids == 1].sum())
    half = balanced_sample_weights(label_ids, 0.5)
    assert half[label_ids == 1].sum() / half.sum() == pytest.approx(np.sqrt(10) / (np.sqrt(10) + np.sqrt(90)))


@pytest.mark.slow
def test_fit_trains_on_marker_genes_keeps_the_best_epoch_and_removes_its_checkpoints(tmp_path, backbone):
    cells, labels = marker_cells()
    result = fit(cells, labels, tiny_recipe(backbone, keep_best_epoch=True), tiny_args(tmp_path), gene_names=GENES)
    assert result.processor.is_fitted and result.processor.selection == "excess"
    evaluations = [e for e in result.history if "eval_validation_macro_f1" in e]
    assert [e["epoch"] for e in evaluations] == [float(epoch) for epoch in range(1, 9)]
    best = max(e["eval_validation_macro_f1"] for e in evaluations)
    assert result.validation_metrics()["macro_f1"] == best
    assert result.best_epoch == next(e["epoch"] for e in evaluations if e["eval_validation_macro_f1"] == best)
    assert not list((tmp_path / "run").glob("checkpoint-*"))
    assert len(result.validation_cells) == 9  # 3 of each 30-cell type, none of the 4 rare cells
    inputs = result.processor(cells, gene_names=GENES)
    predicted = result.model.eval()(**inputs).logits.argmax(-1).numpy()
    accuracy = np.mean(np.array(sorted(set(labels)))[predicted] == labels)
    assert accuracy > 0.9


@pytest.mark.slow
def test_fit_ends_on_the_best_epoch_not_the_last(tmp_path, backbone):
    """A callback spoils the head after the last epoch's training: the model returned is the best epoch's."""
    import torch
    from transformers import TrainerCallback

    class SpoilLastEpoch(TrainerCallback):
        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            if round(state.epoch) == args.num_train_epochs:
                with torch.no_grad():
                    model.head.out_proj.bias[0] = 1e4  # every cell is now the first type

    cells, labels = marker_cells()
    result = fit(cells, labels, tiny_recipe(backbone, keep_best_epoch=True, best_epoch_metric="accuracy"),
                 tiny_args(tmp_path), gene_names=GENES, callbacks=[SpoilLastEpoch()])
    scores = {e["epoch"]: e["eval_validation_accuracy"] for e in result.history if "eval_validation_accuracy" in e}
    assert result.best_epoch < 8 and scores[8.0] < scores[result.best_epoch]
    validation = result.validation_cells
    inputs = result.processor(cells[validation], gene_names=GENES)
    predicted = result.model.eval()(**inputs).logits.argmax(-1).numpy()
    kept_accuracy = np.mean(predicted == np.array([result.label2id[label] for label in labels[validation]]))
    assert kept_accuracy == pytest.approx(scores[result.best_epoch])


@pytest.mark.slow
def test_by_default_validation_is_evaluated_every_epoch_and_the_last_epoch_is_kept(tmp_path, backbone):
    cells, labels = marker_cells()
    result = fit(cells, labels, tiny_recipe(backbone), tiny_args(tmp_path), gene_names=GENES)
    evaluations = [e for e in result.history if "eval_validation_macro_f1" in e]
    assert len(evaluations) == 8 and result.best_epoch is None
    assert result.validation_metrics()["macro_f1"] == evaluations[-1]["eval_validation_macro_f1"]
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").glob("checkpoint-*"))


@pytest.mark.slow
def test_class_balanced_sampling_draws_rare_types_more_often(tmp_path, backbone):
    cells, labels = marker_cells()
    result = fit(cells, labels, tiny_recipe(backbone, class_balance=1.0, validation_fraction=0.0),
                 tiny_args(tmp_path, num_train_epochs=1), gene_names=GENES)
    sampler = result.trainer._get_train_sampler()
    drawn = labels[np.array(list(sampler))]
    assert (drawn == "rare").mean() > 0.15  # 4 of 94 cells, drawn about a quarter of the time


@pytest.mark.slow
def test_fit_calibrates_a_temperature_on_the_validation_cells(tmp_path, backbone):
    from scinterpreter.calibration import fit_temperature

    cells, labels = marker_cells()
    result = fit(cells, labels, tiny_recipe(backbone, unassigned_score="max_probability"), tiny_args(tmp_path),
                 gene_names=GENES)
    temperature = result.calibration["temperature"]
    assert temperature > 0 and result.model.config.calibration_temperature == temperature
    validation = result.validation_cells
    logits = result.model.eval()(**result.processor(cells[validation], gene_names=GENES)).logits.detach().numpy()
    references = [result.label2id[label] for label in labels[validation]]
    assert temperature == pytest.approx(fit_temperature(logits, references), rel=1e-3)
    # The Unassigned threshold: about 5% of the validation cells (at least one) fall below it, none far more.
    threshold = result.model.config.unassigned_threshold
    assert threshold == result.calibration["unassigned_threshold"]
    confidence = result.model.confidence(torch.as_tensor(logits)).numpy()
    assert 0 < np.mean(confidence <= threshold) and np.mean(confidence < threshold) <= 0.05
    unscaled = fit(cells, labels, tiny_recipe(backbone, calibrate=False), tiny_args(tmp_path), gene_names=GENES)
    assert unscaled.calibration == {} and unscaled.model.config.calibration_temperature is None


def test_temperature_scaling_fixes_an_overconfident_model():
    from scinterpreter.calibration import expected_calibration_error, fit_temperature, softmax

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 3000)
    logits = rng.normal(size=(3000, 4))
    logits[np.arange(3000), labels] += 1.0
    overconfident = 5 * logits
    temperature = fit_temperature(overconfident, labels)
    assert 3 < temperature < 8
    before = expected_calibration_error(softmax(overconfident), labels)
    after = expected_calibration_error(softmax(overconfident, temperature), labels)
    assert before > 0.15 and after < 0.05


def test_the_ece_floor_is_what_a_calibrated_model_shows_on_as_many_cells():
    from scinterpreter.calibration import calibrated_ece_floor, expected_calibration_error, softmax

    rng = np.random.default_rng(1)
    probabilities = softmax(3 * rng.normal(size=(200, 5)))
    # Labels drawn from the probabilities themselves: a perfectly calibrated model, whose ECE is sampling noise only.
    drawn = [expected_calibration_error(probabilities, [rng.choice(5, p=p) for p in probabilities])
             for _ in range(100)]
    floor = calibrated_ece_floor(probabilities)
    assert floor == pytest.approx(np.mean(drawn), rel=0.15)
    assert 0.02 < floor < 0.1  # 200 cells: far from 0
    assert calibrated_ece_floor(np.tile(probabilities, (50, 1))) < floor / 4  # 50x the cells, about 1/7 the noise


def test_unassigned_thresholds_flag_at_most_the_rate_by_either_score():
    from scinterpreter.calibration import fit_unassigned_threshold, fit_unassigned_thresholds

    rng = np.random.default_rng(0)
    independent = rng.random((2000, 2))
    thresholds = fit_unassigned_thresholds(independent, 0.05)
    flagged = (independent < thresholds).any(1)
    assert 0.045 < flagged.mean() <= 0.05
    # The same quantile of each score: about 2.5% each when the two scores flag different cells.
    assert [np.mean(independent[:, i] < t) for i, t in enumerate(thresholds)] == pytest.approx([0.025, 0.025],
                                                                                                abs=0.006)
    # Scores that flag the same cells: each is cut at the rate itself, as one score would be.
    same = np.repeat(independent[:, :1], 2, axis=1)
    assert fit_unassigned_thresholds(same, 0.05) == [fit_unassigned_threshold(same[:, 0], 0.05)] * 2
    assert fit_unassigned_thresholds(independent[:, :1], 0.05) == [fit_unassigned_threshold(independent[:, 0], 0.05)]


@pytest.mark.slow
@pytest.mark.parametrize("score", ["centroid_distance", "max_probability_and_centroid_distance"])
def test_fit_stores_centroids_and_the_pipeline_flags_cells_by_their_distance(tmp_path, backbone, monkeypatch, score):
    from transformers import pipeline

    from scinterpreter.build import save_model_folder

    cells, labels = marker_cells()
    result = fit(cells, labels, tiny_recipe(backbone, unassigned_score=score), tiny_args(tmp_path),
                 gene_names=GENES)
    model, config = result.model.eval(), result.model.config
    assert config.unassigned_score == score and config.cell_type_centroids
    # Each type's centroid: the mean unit-length embedding of its training (not validation) cells.
    training = np.setdiff1d(np.arange(len(labels)), result.validation_cells)
    embeddings = model(**result.processor(cells[training], gene_names=GENES)).cell_embeddings.detach()
    unit = torch.nn.functional.normalize(embeddings, dim=-1)
    label_ids = np.array([result.label2id[label] for label in labels[training]])
    expected = torch.stack([unit[label_ids == i].mean(0) for i in range(len(result.label2id))])
    torch.testing.assert_close(model.cell_type_centroids, expected, atol=1e-4, rtol=1e-4)
    # The threshold: about 5% of the validation cells (at least one) fall below it, none far more.
    validation = model(**result.processor(cells[result.validation_cells], gene_names=GENES))
    confidence = model.confidence(validation.logits, validation.cell_embeddings).detach().numpy()
    threshold = config.unassigned_threshold
    assert 0 < np.mean(confidence <= threshold) and np.mean(confidence < threshold) <= 0.05
    if score == "max_probability_and_centroid_distance":
        # Under the threshold exactly where the probability or the similarity is under its own.
        probability = model.probabilities(validation.logits).max(-1).values.detach().numpy()
        similarity = 1 - model.centroid_distance(validation.cell_embeddings).detach().numpy()
        assert result.calibration["centroid_similarity_threshold"] == config.centroid_similarity_threshold
        either = (probability < threshold) | (similarity < config.centroid_similarity_threshold)
        assert ((confidence < threshold) == either).all()
    else:
        assert config.centroid_similarity_threshold is None
    # Saved and annotated with threshold="auto": exactly the cells under the threshold are Unassigned. The pipeline
    # runs the backbone in float32 and all cells in one batch, as here, so that a cell at the threshold (the
    # validation cell it was chosen at) cannot flip (a bfloat16 backbone moves the similarities by ~1e-4).
    monkeypatch.setenv("SCINTERPRETER_BACKBONE_DTYPE", "float32")
    folder = save_model_folder(model, result.processor, tmp_path / "model")
    annotate = pipeline("cell-annotation", model=str(folder), trust_remote_code=True)
    outputs = model(**result.processor(cells, gene_names=GENES))
    far = model.confidence(outputs.logits, outputs.cell_embeddings).detach().numpy() < threshold
    results = annotate(cells, gene_names=GENES, threshold="auto", batch_size=len(cells))
    assert far.any() and [r["label"] == "Unassigned" for r in results] == far.tolist()


def test_class_balance_on_a_dataset_without_labels_is_our_error(tmp_path):
    from processing_scinterpreter import ScInterpreterInputError
    from scinterpreter.data import CellDataset
    from scinterpreter.training import fit_datasets

    unlabelled = CellDataset({"gene_ids": np.zeros((4, 3), dtype=np.int64), "gene_values": np.ones((4, 3), np.float32),
                              "gene_mask": np.ones((4, 3), dtype=bool)})
    with pytest.raises(ScInterpreterInputError, match="no labels"):
        fit_datasets(None, None, unlabelled, Recipe(class_balance=0.5),
                     ScInterpreterTrainingArguments(output_dir=str(tmp_path)))


def test_linear_gene_scores_are_scikit_learns_logistic_regression_on_the_chosen_genes():
    from types import SimpleNamespace

    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    from scinterpreter.data import CellDataset
    from scinterpreter.training import fit_linear_gene_scores

    rng = np.random.default_rng(0)
    n_cells, n_vocab, k, n_labels = 300, 50, 6, 3
    gene_ids = np.stack([rng.choice(n_vocab, k, replace=False) for _ in range(n_cells)])
    values = rng.exponential(1.0, (n_cells, k)).astype(np.float32)
    mask = (np.arange(k) < rng.integers(2, k + 1, n_cells)[:, None]).astype(np.int64)
    labels = (gene_ids[:, 0] % n_labels + (values[:, 0] > 2)) % n_labels  # learnable, not separable
    stored = {}
    model = SimpleNamespace(config=SimpleNamespace(gene_vocab_size=n_vocab, num_labels=n_labels),
                            set_linear_gene_scores=lambda weights, bias: stored.update(weights=weights, bias=bias))
    info = fit_linear_gene_scores(model, CellDataset(
        {"gene_ids": gene_ids, "gene_values": values, "gene_mask": mask}, labels), inverse_regularization=0.5)
    assert stored["weights"].shape == (n_vocab, n_labels) and info["cells"] == n_cells
    rows = np.repeat(np.arange(n_cells), k)
    design = sparse.csr_matrix(((values * mask).ravel(), (rows, gene_ids.ravel())), shape=(n_cells, n_vocab))
    reference = LogisticRegression(C=0.5, tol=1e-8, max_iter=5000).fit(design, labels)
    # The penalised weights have one minimum; the unpenalised bias only up to a shift common to all labels.
    np.testing.assert_allclose(stored["weights"].numpy(), reference.coef_.T, atol=2e-3)
    bias = stored["bias"].numpy()
    np.testing.assert_allclose(bias - bias.mean(), reference.intercept_ - reference.intercept_.mean(), atol=2e-3)
    unseen = np.setdiff1d(np.arange(n_vocab), gene_ids[mask.astype(bool)])
    assert not stored["weights"][unseen].any()


def test_linear_gene_scores_leave_out_unlabelled_cells_and_do_not_rule_out_types_without_cells():
    from types import SimpleNamespace

    from scinterpreter.data import CellDataset
    from scinterpreter.training import fit_linear_gene_scores

    rng = np.random.default_rng(1)
    gene_ids = rng.integers(0, 20, (60, 4))
    labels = gene_ids[:, 0] % 2
    labels[:5] = -100  # cells of a type the model does not know
    stored = {}
    model = SimpleNamespace(config=SimpleNamespace(gene_vocab_size=20, num_labels=3, id2label={2: "unseen"}),
                            set_linear_gene_scores=lambda weights, bias: stored.update(weights=weights, bias=bias))
    cells = {"gene_ids": gene_ids, "gene_values": np.ones((60, 4), np.float32), "gene_mask": np.ones((60, 4))}
    info = fit_linear_gene_scores(model, CellDataset(cells, labels))
    assert info["cells"] == 55
    # "unseen" (label 2) has no cells: no gene weights, and the mean of the other biases, not a large negative one.
    assert not stored["weights"][:, 2].any()
    assert stored["bias"][2] == pytest.approx(float(stored["bias"][:2].mean()))
    streamed = [{name: torch.as_tensor(values[i]) for name, values in cells.items()} | {"labels": torch.tensor(l)}
                for i, l in enumerate(labels)]
    assert fit_linear_gene_scores(model, iter(streamed), max_streamed_cells=30)["cells"] == 25


@pytest.mark.slow
def test_fit_adds_linear_gene_scores_fitted_after_the_head_and_calibrates_the_sum(tmp_path, backbone):
    from scinterpreter.calibration import fit_temperature

    cells, labels = marker_cells()
    result = fit(cells, labels, tiny_recipe(backbone, linear_gene_scores=True, n_linear_genes=12),
                 tiny_args(tmp_path, num_train_epochs=2), gene_names=GENES)
    model = result.model.eval()
    assert model.config.linear_gene_scores and model.gene_score_weights.abs().sum() > 0
    assert result.linear_gene_scores["cells"] == len(cells) - len(result.validation_cells)
    assert result.processor.n_linear_genes == 12 and model.config.n_linear_input_genes == 12
    validation_inputs = result.processor(cells[result.validation_cells], gene_names=GENES)
    with torch.no_grad():  # the head alone, divided by its temperature, is calibrated on the validation cells
        head = (model(**validation_inputs).logits - model.linear_gene_scores(**validation_inputs)).numpy()
    references = [result.label2id[label] for label in labels[result.validation_cells]]
    assert result.linear_gene_scores["head_temperature"] != 1
    assert fit_temperature(head, references) == pytest.approx(1.0, rel=1e-2)
    validation = result.validation_cells
    with torch.no_grad():  # on cells it was not fitted on, the linear part alone names the marker types
        linear = model.linear_gene_scores(**result.processor(cells[validation], gene_names=GENES))
    assert (linear.argmax(-1).numpy() == [result.label2id[label] for label in labels[validation]]).mean() > 0.8
    logits = model(**result.processor(cells[validation], gene_names=GENES)).logits.detach().numpy()
    references = [result.label2id[label] for label in labels[validation]]
    assert result.calibration["temperature"] == pytest.approx(fit_temperature(logits, references), rel=1e-3)


def test_linear_gene_scores_are_fitted_on_the_longer_gene_list_where_the_cells_have_one():
    from types import SimpleNamespace

    from scinterpreter.data import CellDataset
    from scinterpreter.training import fit_linear_gene_scores

    rng = np.random.default_rng(2)
    tokens = rng.integers(0, 10, (80, 3))
    longer = np.concatenate([tokens, rng.integers(10, 26, (80, 4)), rng.integers(26, 30, (80, 1))], axis=1)
    labels = longer[:, -1] % 2  # decided by one of 4 genes that only the longer list holds
    stored = {}
    model = SimpleNamespace(config=SimpleNamespace(gene_vocab_size=30, num_labels=2),
                            set_linear_gene_scores=lambda weights, bias: stored.update(weights=weights, bias=bias))
    cells = {"gene_ids": tokens, "gene_values": np.ones((80, 3), np.float32), "gene_mask": np.ones((80, 3)),
             "linear_gene_ids": longer, "linear_gene_values": np.ones((80, 8), np.float32),
             "linear_gene_mask": np.ones((80, 8))}
    info = fit_linear_gene_scores(model, CellDataset(cells, labels))
    assert stored["weights"][26:].abs().min() > 0.5 and info["training_accuracy"] > 0.9
    assert info["genes"] == len(np.unique(longer))


def test_the_head_is_divided_by_the_temperature_that_calibrates_it_on_the_validation_cells():
    from types import SimpleNamespace

    from scinterpreter.calibration import fit_temperature
    from scinterpreter.training import divide_head_by_its_temperature

    rng = np.random.default_rng(3)
    logits = rng.normal(0, 4, (50, 3)).astype(np.float32)
    labels = np.where(rng.random(50) < 0.6, logits.argmax(-1), rng.integers(0, 3, 50))  # overconfident
    head = SimpleNamespace(out_proj=torch.nn.Linear(4, 3))
    weight, bias = head.out_proj.weight.detach().clone(), head.out_proj.bias.detach().clone()
    trainer = SimpleNamespace(model=SimpleNamespace(head=head),
                              predict=lambda cells, metric_key_prefix: SimpleNamespace(predictions=(logits,),
                                                                                       label_ids=labels))
    temperature = divide_head_by_its_temperature(trainer, None)
    assert temperature == pytest.approx(fit_temperature(logits, labels), rel=1e-3) and temperature > 1
    torch.testing.assert_close(head.out_proj.weight, weight / temperature)
    torch.testing.assert_close(head.out_proj.bias, bias / temperature)


def test_class_balanced_linear_gene_scores_are_scikit_learns_balanced_fit_and_the_scale_multiplies_them():
    from types import SimpleNamespace

    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    from scinterpreter.data import CellDataset
    from scinterpreter.training import fit_linear_gene_scores

    rng = np.random.default_rng(3)
    n_cells, n_vocab, k = 240, 30, 5
    gene_ids = np.stack([rng.choice(n_vocab, k, replace=False) for _ in range(n_cells)])
    values = rng.exponential(1.0, (n_cells, k)).astype(np.float32)
    labels = np.where(gene_ids[:, 0] < 3, 2, (values[:, 1] > 1).astype(int))  # type 2 is rare
    cells = CellDataset({"gene_ids": gene_ids, "gene_values": values, "gene_mask": np.ones((n_cells, k))}, labels)
    fitted = {}
    for scale in (1.0, 2.0):
        stored = {}
        model = SimpleNamespace(config=SimpleNamespace(gene_vocab_size=n_vocab, num_labels=3),
                                set_linear_gene_scores=lambda weights, bias: stored.update(weights=weights, bias=bias))
        info = fit_linear_gene_scores(model, cells, class_balance=1.0, scale=scale)
        fitted[scale] = stored
    assert info["class_balance"] == 1.0 and info["scale"] == 2.0
    design = sparse.csr_matrix((values.ravel(), (np.repeat(np.arange(n_cells), k), gene_ids.ravel())),
                               shape=(n_cells, n_vocab))
    reference = LogisticRegression(class_weight="balanced", tol=1e-8, max_iter=5000).fit(design, labels)
    np.testing.assert_allclose(fitted[1.0]["weights"].numpy(), reference.coef_.T, atol=2e-3)
    np.testing.assert_allclose(fitted[2.0]["weights"].numpy(), 2 * fitted[1.0]["weights"].numpy(), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(fitted[2.0]["bias"].numpy(), 2 * fitted[1.0]["bias"].numpy(), rtol=1e-4, atol=1e-6)
