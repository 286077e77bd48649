"""Fine-tune scInterpreter on a labelled single-cell dataset, evaluate it on held-out cells and save it.

    scinterpreter-train --dataset data.h5ad --label_column cell_type [--split_file split.json] [TrainingArguments flags]
    python train.py ...                  # the same, from a checkout (train.py calls this module)
    python -m scinterpreter.train ...    # the same

Writes to --output_dir: the model folder (safetensors weights, config with auto_map, processor, code files),
metrics.json (accuracy, macro precision / recall / F1, per-class report, timings) and, with the `plots` extra,
confusion_matrix.png, reliability.png and umap.png. Every `transformers.TrainingArguments` flag works
(--num_train_epochs, --learning_rate, --push_to_hub, ...). Needs `pip install 'scinterpreter[train]'`.
"""

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from transformers import HfArgumentParser, pipeline, set_seed

from processing_scinterpreter import MODEL_INPUT_NAMES, ScInterpreterInputError

from .data import CellDataset, check_label_column, read_h5ad, split_cells
from .demo_data import DEMO_DATASETS, fetch_demo_dataset
from .evaluation import annotation_metrics, per_class_report
from .hf_datasets import dataset_to_anndata, load_cells
from .hub import push_model_folder
from .model_card import write_model_card
from .optional import require
from .plots import genept_w, plot_confusion_matrix, plot_reliability, plot_umaps
from .training import (
    Recipe,
    ScInterpreterTrainingArguments,
    build_for_training,
    check_evaluation_flags,
    fit,
    fit_datasets,
)

logger = logging.getLogger("scinterpreter.train")


@dataclass
class ScriptArguments:
    dataset: str = field(
        default="came:baron_human",
        metadata={"help": "Labelled cells: an .h5ad file, a Hub dataset id or local dataset folder (sparse-row "
                          "layout, see scinterpreter/hf_datasets.py), or a demo set (came:baron_human, came:baron_mouse)."},
    )
    label_column: str | None = field(
        default=None, metadata={"help": "obs column holding the cell types (default: cell_type, or the demo's)."}
    )
    layer: str | None = field(default=None, metadata={"help": "AnnData layer to read instead of X."})
    split_file: str | None = field(default=None, metadata={"help": "JSON with `train`/`test` cell names."})
    split_fold: str | None = field(default=None, metadata={"help": "Test batch of a leave-one-batch-out split."})
    test_size: float = field(default=0.2, metadata={"help": "Test fraction of the stratified split (no split_file)."})
    unseen_test_labels: str = field(
        default="error",
        metadata={"help": "Test cells whose type never occurs in training: error, or drop them from the metrics."},
    )
    adapter_only: bool = field(
        default=False,
        metadata={"help": "Save only the trained weights (a few MB); loading takes the backbone and gene table "
                          "from where the config names them (the local cache or the Hub)."},
    )
    umap: bool = field(default=True, metadata={"help": "Write umap.png: test cells by expression, GenePT-w and "
                                                        "scInterpreter embeddings."})
    streaming: bool = field(
        default=False,
        metadata={"help": "Stream the cells of a Hub or local sparse-row dataset instead of loading them (for data "
                          "larger than memory); test cells = --split_file's, else a stable hash of the cell id."},
    )
    reference_cells: int = field(
        default=10_000,
        metadata={"help": "With --streaming: how many training cells of the stream the reference profile is fitted on."},
    )
    annotate_test_cells: bool = field(default=True, metadata={"help": "Reload the saved model as a pipeline and "
                                                                      "annotate the test cells with it."})


def parse_arguments(argv=None):
    """`(script_args, recipe, training_args)` from the command line."""
    parser = HfArgumentParser((ScriptArguments, Recipe, ScInterpreterTrainingArguments))
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv=None, callbacks=None):
    """Trains, evaluates and saves as the command line `argv` says; returns the results written to metrics.json."""
    require("train", "training (scinterpreter-train, train.py)")
    script_args, recipe, training_args = parse_arguments(argv)
    # We upload the finished folder ourselves (push_model_folder): Trainer's push would replace our model card.
    push_to = (training_args.hub_model_id or Path(training_args.output_dir).name) if training_args.push_to_hub else None
    training_args = replace(training_args, push_to_hub=False)
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(training_args.seed)
    output_dir = Path(training_args.output_dir)
    started = time.perf_counter()
    if training_args.ddp_find_unused_parameters is None and recipe.cell_pooling != "mean":
        training_args.ddp_find_unused_parameters = False  # every trained parameter is used: skip DDP's extra pass
    if script_args.streaming:
        return train_streaming(script_args, recipe, training_args, callbacks, started, push_to)

    dataset_path, label_column = script_args.dataset, script_args.label_column or "cell_type"
    if script_args.dataset in DEMO_DATASETS:
        dataset_path, demo_label_column = fetch_demo_dataset(script_args.dataset)
        label_column = script_args.label_column or demo_label_column
    if str(dataset_path).endswith(".h5ad"):
        adata = read_h5ad(dataset_path)
    else:  # a Hub dataset id or a local dataset folder: labels arrive as obs["cell_type"]
        adata = dataset_to_anndata(load_cells(dataset_path))
    labels = check_label_column(adata, label_column)
    train_idx, test_idx = split_cells(
        adata, labels, script_args.split_file, script_args.split_fold, script_args.test_size, training_args.seed
    )
    classes = sorted(set(labels[train_idx]))
    unseen = sorted(set(labels[test_idx]) - set(classes))
    if unseen and script_args.unseen_test_labels != "drop":
        raise ScInterpreterInputError(
            f"test cells of type {unseen} have no training cells, so the model cannot learn those labels. "
            "Change the split, or pass --unseen_test_labels drop to leave those cells out of the metrics."
        )
    if unseen:
        logger.warning(f"test labels {unseen} never occur in training; those cells are left out of the metrics")
    logger.info(f"{len(train_idx)} training and {len(test_idx)} test cells, {len(classes)} cell types")

    fitted = fit(adata[train_idx], labels[train_idx], recipe, training_args, layer=script_args.layer,
                 classes=classes, callbacks=callbacks, adapter_only=script_args.adapter_only)
    model, processor, trainer = fitted.model, fitted.processor, fitted.trainer
    training_args = trainer.args
    evaluated = test_idx[np.isin(labels[test_idx], classes)]
    references = np.array([fitted.label2id[label] for label in labels[evaluated]])
    eval_started = time.perf_counter()
    test_inputs = processor(adata[evaluated], layer=script_args.layer, return_tensors="np")
    prediction = trainer.predict(CellDataset(test_inputs, references), metric_key_prefix="test")
    eval_seconds = time.perf_counter() - eval_started
    logits, cell_embeddings = prediction.predictions[:2]
    predicted = logits.argmax(-1)
    metrics = annotation_metrics(predicted, references)
    results = {
        "dataset": script_args.dataset,
        "label_column": label_column,
        "test_size": script_args.test_size,
        "gene_match": processor.match_genes(adata.var_names).summary(),
        "split_file": script_args.split_file,
        "split_fold": script_args.split_fold,
        "n_train_cells": int(len(train_idx) - len(fitted.validation_cells)),
        "n_validation_cells": int(len(fitted.validation_cells)),
        "n_test_cells": int(len(evaluated)),
        "test": metrics,
        "validation": {key: round(float(value), 4) for key, value in fitted.validation_metrics().items()},
        "calibration": test_calibration(logits, references, fitted.calibration, model, cell_embeddings),
        "best_epoch": fitted.best_epoch,
        "per_class": per_class_report(predicted, references, classes),
        "train_seconds": round(fitted.train_seconds, 1),
        "train_cells_per_second": round(
            trainer.state.global_step * training_args.train_batch_size * training_args.world_size
            / fitted.train_seconds, 2
        ),
        "test_cells_per_second": round(len(evaluated) / eval_seconds, 2),
        "backbone_dtype": str(model.model.backbone_dtype).replace("torch.", ""),
        "script_args": asdict(script_args),
        "recipe": asdict(recipe),
        "training_args": {k: training_args.to_dict()[k] for k in
                          ("learning_rate", "num_train_epochs", "per_device_train_batch_size", "lr_scheduler_type",
                           "warmup_steps", "weight_decay", "seed")},
    }

    if model.config.linear_gene_scores:
        results["linear_gene_scores"] = {**fitted.linear_gene_scores,
                                         **parts_of_the_logits(model, test_inputs, logits, references)}
    trainer.save_model(str(output_dir))
    if not trainer.is_world_process_zero():  # with torchrun / accelerate, one process writes the outputs
        return results
    write_model_card(output_dir, results, model, training_args.hub_model_id)
    draw(plot_confusion_matrix, references, predicted, classes, output_dir / "confusion_matrix.png",
         title=f"scInterpreter, {Path(dataset_path).stem} test cells")
    if fitted.calibration:
        draw(plot_reliability, logits, references, fitted.calibration["temperature"], output_dir / "reliability.png",
             title=f"{Path(dataset_path).stem} test cells")
    if script_args.umap and len(evaluated) >= 10:
        values, gene_ids = processor.normalize(adata[evaluated], layer=script_args.layer)
        gene_table = model.model.gene_embeddings.detach().cpu().numpy()
        draw(plot_umaps, {"log-normalised expression": values, "GenePT-w": genept_w(values, gene_ids, gene_table),
                          "scInterpreter": cell_embeddings}, labels[evaluated], output_dir / "umap.png",
             title=f"{Path(dataset_path).stem} test cells")

    if script_args.annotate_test_cells:
        annotate = pipeline("cell-annotation", model=str(output_dir), trust_remote_code=True)
        test_adata = adata[test_idx].copy()
        annotations = annotate(test_adata, batch_size=training_args.per_device_eval_batch_size)
        agreement = float(np.mean([a["label"] == label for a, label in zip(annotations, labels[test_idx])]))
        results["pipeline_test_accuracy"] = round(agreement, 4)
        logger.info(f"pipeline on the saved model: {agreement:.4f} of test cells labelled as their reference")
        counts = annotations.adata.obs["scinterpreter"].value_counts()
        logger.info("pipeline labels of the test cells:\n" + counts.to_string())

    results["total_seconds"] = round(time.perf_counter() - started, 1)
    (output_dir / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"test accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  "
          f"(macro precision {metrics['macro_precision']:.4f}, macro recall {metrics['macro_recall']:.4f}); "
          f"training {fitted.train_seconds / 60:.1f} min; model and metrics.json in {output_dir}")
    if push_to:
        results["pushed_to"] = push_model_folder(output_dir, push_to, token=training_args.hub_token,
                                                 private=training_args.hub_private_repo)
    return results


def draw(plot, *args, **kwargs):
    """`plot(*args, **kwargs)`, a figure of `scinterpreter.plots` whose last positional argument is its path; without
    the `plots` extra installed, a warning names the figure and the extra, and training goes on."""
    try:
        plot(*args, **kwargs)
    except ImportError as error:  # raised by `require` before any plotting
        logger.warning(f"{Path(args[-1]).name} not written: {error}")


def parts_of_the_logits(model, inputs, logits, references) -> dict:
    """Test accuracy and macro-F1 of the head alone and of the linear gene scores alone (the logits are their sum)."""
    import torch

    with torch.no_grad():
        linear = np.concatenate([model.linear_gene_scores(**{
            name: torch.as_tensor(inputs[name][start:start + 4096]).to(model.device)
            for name in inputs if name in MODEL_INPUT_NAMES}).cpu().numpy()
            for start in range(0, len(inputs["gene_ids"]), 4096)])
    parts = {}
    for name, part in (("test_head_alone", logits - linear), ("test_linear_gene_scores_alone", linear)):
        metrics = annotation_metrics(part.argmax(-1), references)
        parts[name] = {key: metrics[key] for key in ("accuracy", "macro_f1")}
    logger.info(f"test cells, head alone: {parts['test_head_alone']}; linear gene scores alone: "
                f"{parts['test_linear_gene_scores_alone']}")
    return parts


def test_calibration(logits, references, calibration: dict, model, cell_embeddings=None) -> dict:
    """Expected calibration error (15 bins) of the test cells before and after the validation temperature, the ECE
    that a perfectly calibrated model would show on as many cells (`test_ece_floor`), and the fraction of test cells
    the fitted Unassigned threshold would flag (its score may need their `cell_embeddings`)."""
    import torch

    from .calibration import calibrated_ece_floor, expected_calibration_error, softmax

    if not calibration:
        return {}
    calibrated = softmax(logits, calibration["temperature"])
    embeddings = None if cell_embeddings is None else torch.as_tensor(cell_embeddings)
    flagged = model.confidence(torch.as_tensor(logits), embeddings).numpy() < model.config.unassigned_threshold
    return {**calibration,
            "test_ece_before": round(expected_calibration_error(softmax(logits), references), 4),
            "test_ece_after": round(expected_calibration_error(calibrated, references), 4),
            "test_ece_floor": round(calibrated_ece_floor(calibrated), 4),
            "test_unassigned_fraction": round(float(flagged.mean()), 4),
            "test_accuracy_of_assigned": round(float((logits.argmax(-1) == references)[~flagged].mean()), 4)
            if (~flagged).any() else None}


def streamed_max_steps(n_train_cells: int, training_args) -> int:
    """The training steps of `num_train_epochs` passes over `n_train_cells` streamed cells (a stream has no length
    for `Trainer` to count them by): each step (an optimizer update) takes `gradient_accumulation_steps` batches of
    `train_batch_size` cells on each of the `world_size` processes that torchrun starts, so more processes or more
    accumulation take fewer steps."""
    import math

    per_step = training_args.train_batch_size * training_args.world_size * training_args.gradient_accumulation_steps
    return math.ceil(n_train_cells / per_step) * math.ceil(training_args.num_train_epochs)


def train_streaming(script_args, recipe, training_args, callbacks, started, push_to=None):
    """`main` for streamed datasets: cells are read, processed and trained on chunk by chunk, never all held; the
    training itself is `fit`'s (`fit_datasets`), without validation cells."""
    from .streaming import StreamingCells, cell_key, hash_split

    if str(script_args.dataset).endswith(".h5ad") or script_args.dataset in DEMO_DATASETS:
        raise ScInterpreterInputError("--streaming reads Hub or local datasets in the sparse-row layout; an .h5ad "
                                      "file is read in backed mode by scinterpreter.annotate, or load it whole.")
    check_evaluation_flags(training_args, has_validation=False)  # before the stream is opened and counted
    data = load_cells(script_args.dataset, streaming=True)
    cells, gene_metadata = data["cells"], data["gene_metadata"]
    features = cells.features or {}
    label_column = script_args.label_column or "label"
    if label_column not in features:
        raise ScInterpreterInputError(f"{script_args.dataset} has no label column {label_column!r} (columns: "
                                      f"{list(features)}): pass the one that holds the cell types with --label_column.")
    if script_args.split_file:
        if "cell_id" not in features:
            raise ScInterpreterInputError(f"--split_file names test cells by cell_id, which {script_args.dataset}'s rows "
                                          "do not have: leave it out to split by a hash of each cell (--test_size).")
        test_names = set(json.loads(Path(script_args.split_file).read_text())["test"])
        is_test = test_names.__contains__
    else:
        def is_test(key):
            return hash_split(key, script_args.test_size)

    def is_train(key):
        return not is_test(key)

    if recipe.validation_fraction > 0:
        logger.info("streamed training holds no validation cells out: it trains for --max_steps and keeps the end")
    # A stream has no length: one pass over the cells' names (and string labels) counts the training cells.
    key_columns = ["cell_id"] if "cell_id" in features else ["genes", "expressions"]
    n_train, train_labels = 0, set()
    for row in cells.select_columns(key_columns + [label_column]):
        if is_train(cell_key(row)):
            n_train += 1
            train_labels.add(str(row[label_column]))
    label_feature = features[label_column]
    if hasattr(label_feature, "names"):
        classes, label2id = list(label_feature.names), None
    else:  # plain strings (Tahoe-100M's cell_line_id): the types met among the training cells
        classes = sorted(train_labels)
        label2id = {label: i for i, label in enumerate(classes)}
    reference = StreamingCells(cells, gene_metadata, processor=None, keep=is_train)  # raw cells: no processor
    model, processor = build_for_training(classes, recipe, lambda: reference.first_cells(script_args.reference_cells),
                                          device=training_args.device)
    if training_args.max_steps <= 0:
        training_args.max_steps = streamed_max_steps(n_train, training_args)
        logger.info(f"{n_train} training cells in the stream: {training_args.max_steps} steps")
    stream = dict(gene_metadata=gene_metadata, processor=processor, label_column=label_column, label2id=label2id)
    train_cells = StreamingCells(cells.shuffle(seed=training_args.seed, buffer_size=10_000), keep=is_train, **stream)
    test_cells = StreamingCells(cells, keep=is_test, **stream)
    fitted = fit_datasets(model, processor, train_cells, recipe, training_args, callbacks=callbacks,
                          adapter_only=script_args.adapter_only)
    trainer, train_seconds = fitted.trainer, fitted.train_seconds
    prediction = trainer.predict(test_cells)
    predicted, references = prediction.predictions[0].argmax(-1), prediction.label_ids
    known = references != -100  # test cells of a type no training cell has (string labels) can't be named
    if not known.all():
        logger.warning(f"{int((~known).sum())} streamed test cells are of types never met in training; left out of "
                       "the metrics")
    predicted, references = predicted[known], references[known]
    metrics = annotation_metrics(predicted, references)
    results = {"dataset": script_args.dataset, "streaming": True, "split_file": script_args.split_file,
               "n_train_cells": int(n_train), "test_size": script_args.test_size, "n_test_cells": int(len(references)), "test": metrics,
               "per_class": per_class_report(predicted, references, classes),
               "train_seconds": round(train_seconds, 1), "script_args": asdict(script_args),
               "recipe": asdict(recipe)}
    if fitted.linear_gene_scores:
        results["linear_gene_scores"] = fitted.linear_gene_scores
    output_dir = Path(training_args.output_dir)
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        write_model_card(output_dir, results, model, training_args.hub_model_id)
        draw(plot_confusion_matrix, references, predicted, classes, output_dir / "confusion_matrix.png",
             title="scInterpreter, streamed test cells")
        results["total_seconds"] = round(time.perf_counter() - started, 1)
        (output_dir / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
        print(f"test accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f} "
              f"({len(references)} streamed test cells); training {train_seconds / 60:.1f} min")
    if push_to and trainer.is_world_process_zero():
        results["pushed_to"] = push_model_folder(output_dir, push_to, token=training_args.hub_token,
                                                 private=training_args.hub_private_repo)
    return results


def cli():
    """The `scinterpreter-train` console script: `main` on the command line, exit status 0 when it finishes."""
    main(sys.argv[1:])


if __name__ == "__main__":
    cli()
