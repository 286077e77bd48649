"""Training scInterpreter: `fit` (labelled cells in memory) and `fit_datasets` (encoded cells, e.g. streamed), the one
training path that `train.py`, the benchmarks and the tests all call, with `Recipe` (from `scinterpreter.recipe`,
where every recipe default is written) and `ScInterpreterTrainingArguments`.

    from scinterpreter.training import Recipe, ScInterpreterTrainingArguments, fit

    result = fit(adata[train], labels[train], Recipe(), ScInterpreterTrainingArguments(output_dir="runs/x"))
    result.model, result.processor          # the trained model (best validation epoch) and the fitted processor
"""

import logging
import shutil
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
from torch.utils.data import IterableDataset
from transformers import TrainingArguments

from processing_scinterpreter import ScInterpreterInputError

from .build import build_model
from .data import CellDataset
from .optional import require
from .recipe import Recipe

logger = logging.getLogger(__name__)

VALIDATION = "validation"


@dataclass
class ScInterpreterTrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults measured for scInterpreter (see docs/experiments.md)."""

    output_dir: str = field(default="outputs/scinterpreter")
    learning_rate: float = field(default=2e-3)
    num_train_epochs: float = field(default=12.0)
    per_device_train_batch_size: int = field(default=16)
    per_device_eval_batch_size: int = field(default=64)
    lr_scheduler_type: str = field(default="cosine")
    warmup_steps: float = field(default=0.05)
    weight_decay: float = field(default=0.01)
    logging_steps: float = field(default=20)
    save_strategy: str = field(default="no")
    dataloader_pin_memory: bool = field(default=False)
    seed: int = field(default=0)


@dataclass
class FitResult:
    """What `fit` and `fit_datasets` return: the trained model and fitted processor, and how the training went
    (`validation_cells`: the positions of `fit`'s cells it held out)."""

    model: object
    processor: object
    trainer: object
    label2id: dict
    train_seconds: float
    validation_cells: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    best_epoch: float | None = None
    history: list = field(default_factory=list)
    calibration: dict = field(default_factory=dict)
    linear_gene_scores: dict = field(default_factory=dict)

    def validation_metrics(self) -> dict:
        """The validation metrics of the epoch the model was kept from (empty without validation cells)."""
        evaluations = [entry for entry in self.history if f"eval_{VALIDATION}_loss" in entry]
        if not evaluations:
            return {}
        kept = [entry for entry in evaluations if entry.get("epoch") == self.best_epoch] or evaluations[-1:]
        prefix = f"eval_{VALIDATION}_"
        return {key[len(prefix):]: value for key, value in kept[0].items()
                if key.startswith(prefix) and not key.endswith(("runtime", "per_second"))}


def balanced_sample_weights(label_ids: np.ndarray, power: float) -> np.ndarray | None:
    """Per-cell sampling weights `count(type)^-power` (None for power 0: the data's own frequencies)."""
    if power == 0:
        return None
    if not 0 < power <= 1:
        raise ScInterpreterInputError(f"class_balance must be between 0 and 1, got {power}.")
    counts = np.bincount(label_ids)
    return counts[label_ids].astype(np.float64) ** -power


def validation_split(labels: np.ndarray, fraction: float, seed: int):
    """
    `(train, validation)` positions: `floor(fraction x n)` random cells of each type held out, so that a type with
    fewer than `1 / fraction` cells keeps all of them for training.
    """
    positions = np.arange(len(labels))
    if fraction <= 0:
        return positions, positions[:0]
    if fraction >= 1:
        raise ScInterpreterInputError(f"validation_fraction must be below 1, got {fraction}.")
    rng = np.random.default_rng(seed)
    held_out = []
    for label in sorted(set(labels)):
        members = positions[labels == label]
        held_out.extend(rng.choice(members, size=int(fraction * len(members)), replace=False).tolist())
    validation = np.sort(np.array(held_out, dtype=np.int64))
    return np.setdiff1d(positions, validation), validation


def annotation_scores(eval_prediction) -> dict:
    """Accuracy and macro-F1 of a `Trainer` evaluation (the per-epoch validation metrics)."""
    from sklearn.metrics import accuracy_score, f1_score

    logits = eval_prediction.predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    predicted, references = logits.argmax(-1), eval_prediction.label_ids
    return {"accuracy": accuracy_score(references, predicted),
            "macro_f1": f1_score(references, predicted, average="macro")}


def check_evaluation_flags(training_args, has_validation: bool):
    """An error where the training arguments ask for evaluation without validation cells to evaluate. Callers run it
    before reading the backbone or the data, so that a wrong flag fails in seconds rather than minutes."""
    if not has_validation and (training_args.load_best_model_at_end or training_args.eval_strategy != "no"):
        raise ScInterpreterInputError("--eval_strategy / --load_best_model_at_end need validation cells: set "
                                      "--validation_fraction above 0 (streamed training holds none out).")


def _epoch_settings(training_args, recipe: Recipe, has_validation: bool):
    """Training arguments for per-epoch validation and keeping the best epoch, and whether the checkpoints that
    this needs are temporary (the caller asked for none)."""
    if not has_validation:
        return training_args, False
    changes = {}
    if training_args.eval_strategy == "no":
        changes["eval_strategy"] = "epoch"
    temporary = False
    if recipe.keep_best_epoch and not training_args.load_best_model_at_end and training_args.save_strategy == "no":
        changes.update(save_strategy=changes.get("eval_strategy", training_args.eval_strategy),
                       load_best_model_at_end=True, save_total_limit=1)
        temporary = True
    if changes.get("load_best_model_at_end") or training_args.load_best_model_at_end:
        metric = training_args.metric_for_best_model or recipe.best_epoch_metric
        metric = metric.removeprefix("eval_").removeprefix(f"{VALIDATION}_")
        changes.update(metric_for_best_model=f"{VALIDATION}_{metric}", greater_is_better=metric != "loss")
        if training_args.eval_strategy == "steps" or changes.get("eval_strategy") == "steps":
            changes.setdefault("save_steps", training_args.eval_steps)
    return (replace(training_args, **changes) if changes else training_args), temporary


def build_for_training(classes, recipe: Recipe, reference_cells, *, layer=None, device="cpu"):
    """
    `build_model(classes, recipe)`, with the processor's reference profile fitted (it uses no labels) where the
    recipe chooses genes or weighs soft tokens by their excess over it: on `reference_cells()`, an
    `(expression, gene_names)` pair that is read only then (a stream's first training cells, for instance).
    """
    model, processor = build_model(classes, recipe, device=device)
    if processor.selection == "excess" or processor.token_value == "excess":
        expression, gene_names = reference_cells()
        processor.fit(expression, gene_names=gene_names, layer=layer)
    return model, processor


def fit(
    expression,
    labels,
    recipe: Recipe | None = None,
    training_args: TrainingArguments | None = None,
    *,
    gene_names=None,
    layer=None,
    classes=None,
    callbacks=None,
    adapter_only: bool = False,
    monitor_sets: dict | None = None,
) -> FitResult:
    """
    Trains scInterpreter on labelled cells: holds out validation cells (`recipe.validation_fraction`, per type),
    builds the model and fits the processor's reference profile on all the given cells (`build_for_training`),
    encodes the cells and trains with `fit_datasets` (rare types drawn more often, validation every epoch, the last
    or best epoch kept, calibration on the validation cells).

    Args:
        expression: the training cells, as the processor takes them (AnnData, matrix with `gene_names`, DataFrame).
        labels: one cell type per cell.
        recipe (`Recipe`, *optional*): what to train (default: `Recipe()`, the measured defaults).
        training_args (`TrainingArguments`, *optional*): how (default: `ScInterpreterTrainingArguments()`).
        classes (`list[str]`, *optional*): label order (default: the sorted cell types of `labels`).
        monitor_sets (`dict[str, tuple]`, *optional*): more `(expression, labels)` sets to evaluate every epoch, e.g.
            the test cells in a benchmark (read like `expression`); reported in `history`, never used for choices.
    """
    require("train", "scinterpreter.training.fit", "accelerate", "sklearn")
    from configuration_scinterpreter import UNASSIGNED_SCORES

    recipe = recipe or Recipe()
    training_args = training_args or ScInterpreterTrainingArguments()
    if recipe.unassigned_score not in UNASSIGNED_SCORES:
        raise ScInterpreterInputError(f"unassigned_score must be one of {UNASSIGNED_SCORES}, "
                                      f"got {recipe.unassigned_score!r}.")
    labels = np.asarray(labels).astype(str)
    n_cells = getattr(expression, "shape", (len(labels),))[0]
    if len(labels) != n_cells:
        raise ScInterpreterInputError(
            f"{len(labels)} labels were given for {n_cells} cells: pass exactly one cell type per cell (row)."
        )
    if len(set(labels)) < 2:
        raise ScInterpreterInputError(f"the labels hold a single cell type ({labels[0]!r}); a classifier needs two.")
    classes = sorted(set(labels)) if classes is None else list(classes)
    label2id = {label: i for i, label in enumerate(classes)}
    unknown = sorted(set(labels) - set(label2id))
    if unknown:
        raise ScInterpreterInputError(f"labels {unknown[:5]} are not among `classes` {classes[:10]}.")
    label_ids = np.array([label2id[label] for label in labels])
    train, validation = validation_split(labels, recipe.validation_fraction, training_args.seed)
    check_evaluation_flags(training_args, len(validation) > 0)  # before the backbone is read

    model, processor = build_for_training(classes, recipe, lambda: (expression, gene_names), layer=layer,
                                          device=training_args.device)
    encoded = processor(expression, gene_names=gene_names, layer=layer, return_tensors="np", show_progress=True)
    cells = lambda positions: CellDataset({k: v[positions] for k, v in encoded.items()}, label_ids[positions])  # noqa: E731
    eval_sets = None
    if len(validation):
        eval_sets = {VALIDATION: cells(validation)}
        for name, (monitor_expression, monitor_labels) in (monitor_sets or {}).items():
            monitor_inputs = processor(monitor_expression, gene_names=gene_names, layer=layer, return_tensors="np")
            eval_sets[name] = CellDataset(monitor_inputs, [label2id.get(str(label), -100) for label in monitor_labels])
    logger.info(f"{len(train)} training and {len(validation)} validation cells, {len(classes)} cell types")
    result = fit_datasets(model, processor, cells(train), recipe, training_args, eval_sets=eval_sets,
                          callbacks=callbacks, adapter_only=adapter_only)
    result.validation_cells = validation
    return result


def fit_datasets(
    model,
    processor,
    train_dataset,
    recipe: Recipe | None = None,
    training_args: TrainingArguments | None = None,
    *,
    eval_sets: dict | None = None,
    callbacks=None,
    adapter_only: bool = False,
) -> FitResult:
    """
    Trains a built model on encoded cells with `ScInterpreterTrainer`: the training that `fit` (cells in memory)
    and `train.py --streaming` share. A `CellDataset` is drawn class-balanced (`recipe.class_balance`), a stream
    (`StreamingCells`) is read in its own order. With a `"validation"` set in `eval_sets`, every set is evaluated
    every epoch, the validation set picks the epoch kept (`recipe.keep_best_epoch`) and calibrates the model
    (`recipe.calibrate`). `training_args.resume_from_checkpoint` resumes (`"last"`: the newest checkpoint).

    Args:
        model, processor: from `build_for_training`.
        train_dataset (`CellDataset` or `IterableDataset`): the encoded training cells, with label ids.
        eval_sets (`dict[str, CellDataset]`, *optional*): `"validation"` and, for the record only, other sets.
    """
    from .trainer import ScInterpreterTrainer

    recipe = recipe or Recipe()
    training_args = training_args or ScInterpreterTrainingArguments()
    has_validation = VALIDATION in (eval_sets or {})
    check_evaluation_flags(training_args, has_validation)  # again for direct callers; `fit` checked before reading
    training_args, temporary_checkpoints = _epoch_settings(training_args, recipe, has_validation)
    sample_weights = None
    if recipe.class_balance and isinstance(train_dataset, IterableDataset):
        logger.info("a streamed dataset is read in its own order: class_balance does not apply")
    elif recipe.class_balance:
        labels = getattr(train_dataset, "labels", None)
        if labels is None:
            raise ScInterpreterInputError("class_balance draws cells by their type, and the training dataset has no "
                                          "labels: pass a CellDataset with label ids, or class_balance=0.")
        sample_weights = balanced_sample_weights(np.asarray(labels), recipe.class_balance)

    output_dir = Path(training_args.output_dir)
    existing = set(output_dir.glob("checkpoint-*"))
    trainer = ScInterpreterTrainer(
        model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_sets,
        processing_class=processor, callbacks=callbacks, adapter_only=adapter_only,
        compute_metrics=annotation_scores if eval_sets else None, train_sample_weights=sample_weights,
    )
    started = time.perf_counter()
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = True  # the newest checkpoint in output_dir
    trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.perf_counter() - started
    if temporary_checkpoints and trainer.is_world_process_zero():
        for folder in set(output_dir.glob("checkpoint-*")) - existing:
            shutil.rmtree(folder, ignore_errors=True)

    linear_gene_scores = {}
    if trainer.model.config.linear_gene_scores:
        head_temperature = None
        if recipe.head_temperature and trainer.model.config.n_scored_genes:
            # Fitted before (a model trained further): its logits are not the head's alone, and its head was divided.
            logger.info("head_temperature: the model's linear gene scores were fitted before; the head is kept as is")
        elif recipe.head_temperature and has_validation:
            head_temperature = divide_head_by_its_temperature(trainer, eval_sets[VALIDATION])
        elif recipe.head_temperature:
            logger.warning("head_temperature needs validation cells (validation_fraction > 0, not streamed): the "
                           "linear gene scores are added to the head as it is")
        linear_gene_scores = fit_linear_gene_scores(trainer.model, train_dataset,
                                                    class_balance=recipe.linear_class_balance,
                                                    scale=recipe.linear_gene_scale)
        if head_temperature is not None:
            linear_gene_scores["head_temperature"] = head_temperature
    calibration = {}
    if recipe.calibrate and has_validation:
        calibration = calibrate(trainer, eval_sets[VALIDATION], recipe.unassigned_score, training_cells=train_dataset)
    best_epoch = None
    if trainer.state.best_model_checkpoint is not None:
        best_step = int(trainer.state.best_model_checkpoint.rstrip("/").rsplit("-", 1)[-1])
        best_epoch = next((entry["epoch"] for entry in trainer.state.log_history
                           if entry.get("step") == best_step and "epoch" in entry), None)
        logger.info(f"kept epoch {best_epoch} (validation {training_args.metric_for_best_model} "
                    f"{trainer.state.best_metric:.4f})")
    return FitResult(model=trainer.model, processor=processor, trainer=trainer, label2id=dict(model.config.label2id),
                     train_seconds=train_seconds, best_epoch=best_epoch, history=list(trainer.state.log_history),
                     calibration=calibration, linear_gene_scores=linear_gene_scores)


def divide_head_by_its_temperature(trainer, validation_cells) -> float:
    """
    Fits the temperature that calibrates the head's logits on the validation cells (before the linear gene scores are
    fitted, the model's logits are the head's) and divides the head's output layer by it, so that the linear gene
    scores are added to calibrated log-odds: an overconfident head would otherwise outvote them where it is wrong.
    Predictions of the head alone do not change. Returns the temperature.
    """
    import torch

    from .calibration import fit_temperature

    prediction = trainer.predict(validation_cells, metric_key_prefix="head_calibration")
    temperature = round(fit_temperature(prediction.predictions[0], prediction.label_ids), 4)
    with torch.no_grad():
        trainer.model.head.out_proj.weight.div_(temperature)
        trainer.model.head.out_proj.bias.div_(temperature)
    logger.info(f"head divided by its validation temperature {temperature}")
    return temperature


def fit_linear_gene_scores(model, cells, inverse_regularization: float = 1.0, max_iter: int = 1000,
                           max_streamed_cells: int = 200_000, max_expressed_genes: int = 50_000_000,
                           class_balance: float = 0.0, scale: float = 1.0) -> dict:
    """
    Fits the model's linear gene scores (`config.linear_gene_scores`) on the training `cells` and stores them in the
    model (`set_linear_gene_scores`): a multinomial logistic regression on the genes the processor chose for each
    cell (its `linear_gene_*` list where it gives one, else the soft tokens' genes), each carrying its token value
    (the features of `benchmarks/ceiling_probe.py`'s `[genes]` probe), with
    scikit-learn's objective, `C * sum of the cross-entropies + |weights|^2 / 2` (`C = inverse_regularization`), by
    L-BFGS. Fitted apart from the head, on the same cells, so that neither learns to lean on the other's fit of the
    training cells; the model's logits are then the sum of the two (a product of experts), calibrated after. Cell
    types without training cells get no gene weights and the mean bias, so that the scores neither favour nor rule
    them out.

    Args:
        cells (`CellDataset`, or an iterable of per-cell dicts as `StreamingCells` yields): encoded cells with labels
            (negative ones, cells of no known type, are left out); of a stream, the first `max_streamed_cells`.
        max_expressed_genes (`int`, *optional*): where the cells hold more expressed genes in all (non-zeros of the
            design matrix, 24 bytes each), a random share of the cells that holds about this many (50M: 1.2 GB).
        class_balance (`float`, *optional*): each cell's cross-entropy weighed by `(n / (n_types x cells of its
            type))^class_balance` (1: scikit-learn's `class_weight="balanced"`; 0: unweighted).
        scale (`float`, *optional*): factor on the fitted weights and bias (`Recipe.linear_gene_scale`): how much say
            the scores have beside the head's logits.

    Returns:
        `dict`: `cells`, `genes` (with a weight), `iterations`, `seconds`, `training_accuracy` of the linear scores
        (`fit_datasets` adds `head_temperature` where it divided the head first).
    """
    import torch

    started = time.perf_counter()
    if isinstance(cells, CellDataset):
        features, labels = cells.features, cells.labels
    else:  # a stream: read once, k genes per cell
        from itertools import islice

        items = list(islice(iter(cells), max_streamed_cells))
        features = {name: torch.stack([torch.as_tensor(item[name]) for item in items])
                    for name in items[0] if name != "labels"} if items else None
        labels = torch.as_tensor([int(item["labels"]) for item in items]) if items and "labels" in items[0] else None
    if labels is None:
        raise ScInterpreterInputError("linear gene scores are fitted on labelled cells; the training cells have none.")
    known = labels >= 0
    if not known.any():
        raise ScInterpreterInputError("linear gene scores are fitted on labelled cells; no training cell has a known "
                                      "cell type.")
    # The processor's longer list where it gives one (`n_linear_genes`), else the soft tokens' genes.
    prefix = "linear_" if "linear_gene_ids" in features else ""
    gene_ids, gene_values = features[f"{prefix}gene_ids"][known], features[f"{prefix}gene_values"][known]
    real, labels = features[f"{prefix}gene_mask"][known].bool(), labels[known].long()
    if real.sum() > max_expressed_genes:  # the design matrix would pass a few GB: a random share of the cells
        n_kept = int(len(real) * max_expressed_genes / int(real.sum()))
        kept = torch.randperm(len(real), generator=torch.Generator().manual_seed(0))[:n_kept].sort().values
        logger.info(f"linear gene scores: fitted on {n_kept} of {len(real)} cells (max_expressed_genes)")
        gene_ids, gene_values, real, labels = gene_ids[kept], gene_values[kept], real[kept], labels[kept]
    present, labels = torch.unique(labels, return_inverse=True)
    cell_of = torch.arange(len(real))[:, None].expand_as(real)[real]
    genes, columns = torch.unique(gene_ids.long()[real], return_inverse=True)  # genes some cell has
    n_cells, n_labels = len(real), model.config.num_labels
    design = torch.sparse_coo_tensor(torch.stack([cell_of, columns]), gene_values.double()[real],
                                     (n_cells, len(genes)), check_invariants=True).coalesce()
    weights = torch.zeros(len(genes), len(present), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(len(present), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-6,
                                  tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")
    penalty = 1.0 / (2.0 * inverse_regularization * n_cells)  # sklearn's objective divided by C * n_cells
    counts = torch.bincount(labels, minlength=len(present)).double()
    cell_weights = (n_cells / (len(present) * counts[labels])) ** class_balance

    def closure():
        optimizer.zero_grad()
        cross_entropy = torch.nn.functional.cross_entropy(torch.sparse.mm(design, weights) + bias, labels,
                                                          reduction="none")
        loss = (cell_weights * cross_entropy).mean() + penalty * weights.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    iterations = optimizer.state[weights].get("n_iter")
    if iterations is not None and iterations >= max_iter:
        logger.warning(f"linear gene scores: L-BFGS stopped at max_iter={max_iter} before converging")
    full_weights = torch.zeros(model.config.gene_vocab_size, n_labels, dtype=torch.float64)
    full_weights[genes[:, None], present[None, :]] = weights.detach()
    full_bias = torch.full((n_labels,), float(bias.detach().mean()), dtype=torch.float64)
    full_bias[present] = bias.detach()
    absent = sorted(set(range(n_labels)) - set(present.tolist()))
    if absent:
        names = [model.config.id2label.get(i, str(i)) for i in absent]
        logger.warning(f"linear gene scores: no training cells of {names[:10]}; they get no gene weights")
    model.set_linear_gene_scores((scale * full_weights).float(), (scale * full_bias).float())
    model.config.n_linear_input_genes = gene_ids.shape[1] if prefix else 0
    with torch.no_grad():
        accuracy = float(((torch.sparse.mm(design, weights) + bias).argmax(-1) == labels).double().mean())
    result = {"cells": n_cells, "genes": len(genes), "iterations": iterations, "class_balance": class_balance,
              "scale": scale,
              "seconds": round(time.perf_counter() - started, 1), "training_accuracy": round(accuracy, 4)}
    logger.info(f"linear gene scores fitted: {result}")
    return result


def calibrate(trainer, validation_cells, unassigned_score: str = "max_probability", training_cells=None) -> dict:
    """
    Fits the temperature on the validation cells, then the confidence under which a cell is called Unassigned
    (about 5% of the validation cells fall below it), and stores both in the model's config; the result also holds
    the final model's validation accuracy and macro-F1. For
    `unassigned_score="centroid_distance"` it first stores the cell types' centroids, from the cell embeddings of
    `training_cells` (`set_cell_type_centroids`), in the model; for `"max_probability_and_centroid_distance"` too,
    and then it fits two thresholds, the probability's and the similarity's (`fit_unassigned_thresholds`).
    """
    import torch

    from .calibration import (expected_calibration_error, fit_temperature, fit_unassigned_threshold,
                              fit_unassigned_thresholds, softmax)

    from configuration_scinterpreter import CENTROID_SCORES

    model = trainer.model
    if unassigned_score in CENTROID_SCORES:
        if training_cells is None:
            raise ScInterpreterInputError(f"unassigned_score={unassigned_score!r} needs the training cells, whose "
                                          "cell embeddings give the cell types' centroids.")
        trained = trainer.predict(training_cells, metric_key_prefix="centroids")
        model.set_cell_type_centroids(torch.as_tensor(trained.predictions[1]), torch.as_tensor(trained.label_ids))
    prediction = trainer.predict(validation_cells, metric_key_prefix="calibration")
    logits, cell_embeddings = prediction.predictions[:2]
    temperature = round(fit_temperature(logits, prediction.label_ids), 4)
    config = model.config
    config.calibration_temperature, config.unassigned_score = temperature, unassigned_score
    logits_tensor, embeddings_tensor = torch.as_tensor(logits), torch.as_tensor(cell_embeddings)
    # Not rounded: rounding up would put a threshold above the validation cell it was chosen at.
    if unassigned_score == "max_probability_and_centroid_distance":
        probability = model.probabilities(logits_tensor).max(-1).values.numpy()
        similarity = (1 - model.centroid_distance(embeddings_tensor)).numpy()
        config.unassigned_threshold, config.centroid_similarity_threshold = fit_unassigned_thresholds(
            np.stack([probability, similarity], 1))
    else:
        config.unassigned_threshold = fit_unassigned_threshold(model.confidence(logits_tensor, embeddings_tensor).numpy())
        config.centroid_similarity_threshold = None
    result = {"temperature": temperature,
              "validation_ece_before": round(expected_calibration_error(softmax(logits), prediction.label_ids), 4),
              "validation_ece_after": round(expected_calibration_error(softmax(logits, temperature),
                                                                       prediction.label_ids), 4),
              "unassigned_score": unassigned_score, "unassigned_threshold": config.unassigned_threshold}
    if config.centroid_similarity_threshold is not None:
        result["centroid_similarity_threshold"] = config.centroid_similarity_threshold
    # The final model's (with linear gene scores, the epochs' validation metrics are of the head alone).
    for name in ("accuracy", "macro_f1"):
        if f"calibration_{name}" in (prediction.metrics or {}):
            result[f"validation_{name}"] = round(float(prediction.metrics[f"calibration_{name}"]), 4)
    logger.info(f"calibration on {len(prediction.label_ids)} validation cells: {result}")
    return result


def recipe_fields() -> list:
    """Names of `Recipe`'s fields (e.g. to split command-line arguments)."""
    return [f.name for f in fields(Recipe)]
