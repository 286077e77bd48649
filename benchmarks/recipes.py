"""Trains scInterpreter recipes on the shared splits through the product's own `fit`, several runs at a time, and
appends one JSON record per run (dataset, split, option, seed, test accuracy / macro-F1, per-epoch validation and
test metrics, the epoch kept): the screening and reporting tool for recipes and ablations.

    python benchmarks/recipes.py --options default --seeds 0 1 2 --out benchmarks/records/recipes_cpu.jsonl
    python benchmarks/recipes.py --options default offsets lora8 --splits baron_human_pancreas lobo_3pv1 --workers 2
    python benchmarks/recipes.py --bundle .device_bundle --options ... --workers 12 --deadline 480   # a lent GPU

Each option is one change from `Recipe()` + `ScInterpreterTrainingArguments()` (the product's defaults), listed in
OPTIONS. Test cells are evaluated every epoch for the record only; the epoch kept is chosen on validation cells
held out of the training cells. With `--bundle` (made by `benchmarks/pack_device_bundle.py`), the data, gene table
and backbone come from that folder instead of ../shared and the local cache, for a machine without them.
"""

import argparse
import copy
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from configuration_scinterpreter import ScInterpreterConfig  # noqa: E402
from splits import load_split, predict, score, splits  # noqa: E402

# One change each from the product's defaults. Keys are `Recipe` or `TrainingArguments` fields.
OPTIONS = {
    "default": {},
    "paper_selection": {"gene_selection": "expression"},
    "token_excess": {"token_value": "excess"},
    "k32": {"n_top_genes": 32},
    "k64": {"n_top_genes": 64},
    "k128": {"n_top_genes": 128},
    "k256": {"n_top_genes": 256},
    "offsets": {"gene_offsets": True},
    "balance_full": {"class_balance": 1.0},
    "lora8": {"lora_rank": 8},
    "gene_dropout10": {"gene_dropout": 0.1},
    "gene_dropout25": {"gene_dropout": 0.25},
    "gene_dropout50": {"gene_dropout": 0.5},
    "no_gene_dropout": {"gene_dropout": 0.0},
    "ep6": {"num_train_epochs": 6},
    "ep24": {"num_train_epochs": 24},
    "lr1e-3": {"learning_rate": 1e-3},
    "lr4e-3": {"learning_rate": 4e-3},
    "no_validation": {"validation_fraction": 0.0},
    "best_by_loss": {"best_epoch_metric": "loss"},
    "no_llm": {"cell_pooling": "mean"},
    "pool_class_and_mean": {"cell_pooling": "class_token_and_mean"},
    "pool_class_token": {"cell_pooling": "class_token"},
    "layers12": {"num_backbone_layers": 12},
    "random_genes": {"gene_encoder": "random"},
    "linear_genes": {"linear_gene_scores": True},
    "no_linear_genes": {"linear_gene_scores": False},
    "linear_tokens_only": {"n_linear_genes": 0},
    "linear_genes256": {"n_linear_genes": 256},
    "no_head_temperature": {"head_temperature": False},
    # session 16: a panel of 2000 variable genes, class-balanced, scores doubled (docs/benchmarks/linear_fusion_probe.md)
    "linear_panel": {"linear_gene_selection": "variable", "n_linear_genes": 2000, "linear_class_balance": 1.0,
                     "linear_gene_scale": 2.0},
    # the session-15 default's linear gene scores: each cell's first 1024 genes, unweighted, added as fitted
    "session15_linear": {"linear_gene_selection": "top", "n_linear_genes": 1024, "linear_class_balance": 0.0,
                         "linear_gene_scale": 1.0},
    "linear_top1024": {"linear_gene_selection": "top", "n_linear_genes": 1024},
    "unweighted_linear": {"linear_class_balance": 0.0, "linear_gene_scale": 1.0},
    "no_linear_balance": {"linear_class_balance": 0.0},
    "linear_scale1": {"linear_gene_scale": 1.0},
}


# Recipe fields that older records lack, and what the recipe did before each field existed. For a config field that
# is what a model folder without it means: `ScInterpreterConfig`'s default, which never changes.
_FOLDER_DEFAULTS = ScInterpreterConfig()
FIELDS_ADDED_LATER = {
    "gene_dropout": _FOLDER_DEFAULTS.gene_dropout,
    "unassigned_score": _FOLDER_DEFAULTS.unassigned_score,
    "linear_gene_scores": _FOLDER_DEFAULTS.linear_gene_scores,
    "n_linear_genes": 0,  # a processor field: a folder without it reads the soft tokens' genes
    "head_temperature": False,
    "linear_gene_selection": "top",  # a processor field: a folder without it reads each cell's top genes
    "linear_class_balance": 0.0,
    "linear_gene_scale": 1.0,
    "calibrate": False,  # not a config field: older models were not calibrated (no calibration_temperature)
}
# Recipe fields since removed, and the value with which a record's recipe is today's (`class_weighting` measured worse).
FIELDS_REMOVED = {"class_weighting": "none"}
# Fields that change no prediction (only probabilities' temperature and the Unassigned cut-off) or are this machine's.
NOT_PREDICTIVE = {"calibrate", "unassigned_score", "backbone_dtype"}
# Fields that only the linear gene scores use.
LINEAR_ONLY = {"n_linear_genes", "head_temperature", "linear_gene_selection", "linear_class_balance",
               "linear_gene_scale"}


def option_against_today(record: dict) -> str:
    """
    The option that a record's recipe is today, from its saved `recipe` and training `changes`: `default` when it
    equals today's `Recipe()` and training defaults, else the options (joined by `+`) that make it, or the changed
    fields themselves. Records keep the option name they ran under, which the defaults may since have moved from.
    """
    from scinterpreter.recipe import Recipe

    today = {**FIELDS_REMOVED, **asdict(Recipe())}
    ran = {**FIELDS_ADDED_LATER, **record["recipe"]}
    unknown = sorted(set(asdict(Recipe())) - set(ran))
    if unknown:  # a field added after the record was written, whose old meaning nobody wrote down
        raise ValueError(f"a record's recipe lacks {unknown}: add what the recipe did before them to FIELDS_ADDED_LATER")
    changed = {name: ran[name] for name in ran
               if name not in NOT_PREDICTIVE and ran[name] != today.get(name)}
    if not ran["linear_gene_scores"]:  # then what the linear gene scores read, and how they are added, changes nothing
        changed = {name: value for name, value in changed.items() if name not in LINEAR_ONLY}
    elif not ran["n_linear_genes"]:  # they read the soft tokens' genes, whatever the selection of a longer list
        changed.pop("linear_gene_selection", None)
    changed.update({k: v for k, v in record.get("changes", {}).items() if k not in ran})  # training arguments
    names = []
    for name, option in OPTIONS.items():
        if option and all(changed.get(k, object()) == v for k, v in option.items()):
            names.append(name)
            changed = {k: v for k, v in changed.items() if k not in option}
    names += [f"{k}={v}" for k, v in changed.items()]
    return "+".join(names) or "default"


def parse_option(name: str) -> dict:
    """An option by name, or several joined by `+` (e.g. `offsets+lora8`)."""
    changes = {}
    for part in name.split("+"):
        if part not in OPTIONS:
            raise SystemExit(f"unknown option {part!r}; known: {sorted(OPTIONS)}")
        changes.update(OPTIONS[part])
    return changes


def load_cells(dataset, split, split_file, fold, bundle):
    """`(expression, gene_names, labels, train, test)` of one split, from ../shared or from a device bundle."""
    if bundle is None:
        adata, labels, train, test = load_split(dataset, split_file, fold)
        return adata, None, labels, train, test
    from scipy import sparse

    data = np.load(Path(bundle) / "data" / f"{dataset}.npz", allow_pickle=False)
    indptr = data["indptr"].astype(np.int64)
    # Gene positions are delta-coded within each row (a row's first step is its first position).
    running = np.cumsum(data["index_steps"].astype(np.int64))
    indices = running - np.repeat(np.concatenate([[0], running])[indptr[:-1]], np.diff(indptr))
    matrix = sparse.csr_matrix((data["values"].astype(np.float32), indices, indptr),
                               shape=(len(data["labels"]), len(data["gene_names"])))
    return matrix, list(data["gene_names"]), data["labels"].astype(str), data[f"{split}.train"], data[f"{split}.test"]


def run_job(job: dict, bundle=None, device=None, overrides=None, logits_dir=None, probes=True) -> dict:
    import torch
    from transformers import set_seed

    from scinterpreter.calibration import calibrated_ece_floor, expected_calibration_error, softmax
    from scinterpreter.training import Recipe, ScInterpreterTrainingArguments, fit

    started = time.perf_counter()
    expression, gene_names, labels, train, test = load_cells(job["dataset"], job["split"], job.get("split_file"),
                                                             job.get("fold"), bundle)
    planned = planned_recipe(job["option"], overrides)
    changes, recipe_names = planned["changes"], {f.name for f in fields(Recipe)}
    recipe = Recipe(**planned["recipe"])
    if bundle is not None and recipe.soft_token_rms == "auto":
        # The bundle's backbone carries only the instruction's token embeddings: `auto` as computed on the full table.
        recipe = replace(recipe, soft_token_rms=json.loads((Path(bundle) / "bundle.json").read_text())["soft_token_rms"])
    with tempfile.TemporaryDirectory() as output_dir:
        args = ScInterpreterTrainingArguments(
            output_dir=output_dir, seed=job["seed"], disable_tqdm=True, logging_strategy="epoch",
            use_cpu=device == "cpu", **{k: v for k, v in changes.items() if k not in recipe_names},
        )
        set_seed(job["seed"])
        take = (lambda cells, positions: cells[positions])
        train_labels = labels[train]
        keep = test[np.isin(labels[test], np.unique(train_labels))]  # test types never trained on can't be named
        test_cells = take(expression, keep)
        result = fit(take(expression, train), train_labels, recipe, args, gene_names=gene_names,
                     monitor_sets={"test": (test_cells, labels[keep])})
        references = np.array([result.label2id[label] for label in labels[keep]])

        def scores(processor, calibration=None):
            """The test cells' metrics, cell embeddings and logits through `processor`."""
            inputs = processor(test_cells, gene_names=gene_names, return_tensors="pt")
            logits, embeddings = predict(result.model, inputs, args.per_device_eval_batch_size)
            logits = logits.numpy()  # float32 (`predict`)
            metrics, linear = score(references, logits.argmax(-1)), None
            if result.model.config.linear_gene_scores:  # the same run's head alone, and the linear scores alone
                with torch.inference_mode():  # 4096 cells at a time: the longer gene list has up to n_linear_genes genes
                    linear = np.concatenate([result.model.linear_gene_scores(
                        **{name: tensor[start:start + 4096].to(result.model.device) for name, tensor in inputs.items()}
                    ).float().cpu().numpy() for start in range(0, len(references), 4096)])
                metrics["without_linear_gene_scores"] = score(references, (logits - linear).argmax(-1))
                metrics["linear_gene_scores_only"] = score(references, linear.argmax(-1))
                head_temperature = result.linear_gene_scores.get("head_temperature")
                if head_temperature:  # the same parts added without dividing the head by its temperature
                    metrics["without_head_temperature"] = score(
                        references, ((logits - linear) * head_temperature + linear).argmax(-1))
                linear_scale = result.linear_gene_scores.get("scale", 1.0)
                if linear_scale != 1.0:  # the same parts, the linear scores as fitted (linear_gene_scale 1)
                    metrics["linear_gene_scale_1"] = score(references, (logits - linear + linear / linear_scale).argmax(-1))
            if calibration:  # test ECE (15 bins) before and after the temperature fitted on the validation cells
                metrics["test_ece_before"] = round(expected_calibration_error(softmax(logits), references), 4)
                calibrated = softmax(logits, calibration["temperature"])
                metrics["test_ece_after"] = round(expected_calibration_error(calibrated, references), 4)
                metrics["test_ece_floor"] = round(calibrated_ece_floor(calibrated), 4)
            return metrics, embeddings.numpy(), logits, linear

        metrics, test_embeddings, test_logits, test_linear = scores(result.processor, result.calibration)
        if logits_dir:  # for ensembles over seeds (seed_ensemble.py); each member keeps its own validation temperature
            save_run_logits(logits_dir, job, result, test_logits, references, keep, test_linear)
        if probes:
            trained = np.setdiff1d(np.arange(len(train)), result.validation_cells)
            metrics["test_embedding_probe"] = embedding_probe(
                result, take(expression, train[trained]), train_labels[trained], test_embeddings, references,
                gene_names, args.per_device_eval_batch_size)
            # Transductive, for the record: the same model with the reference profile refitted on the (unlabelled)
            # test cells, as a user annotating another batch or species could do with `processor.fit`.
            metrics["test_reference_refit"] = scores(copy.deepcopy(result.processor).fit(test_cells,
                                                                                        gene_names=gene_names))[0]
    epochs = [{key.removeprefix("eval_"): round(value, 4) if isinstance(value, float) else value
               for key, value in entry.items() if key.startswith(("eval_validation_", "eval_test_", "epoch", "loss"))
               and not key.endswith(("runtime", "per_second"))}
              for entry in result.history if {"eval_validation_loss", "eval_test_loss", "loss"} & set(entry)]
    return {
        **{k: job[k] for k in ("option", "dataset", "split", "seed")},
        "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
        **{k: metrics[k] for k in ("test_reference_refit", "test_embedding_probe", "without_linear_gene_scores",
                                   "linear_gene_scores_only", "without_head_temperature", "linear_gene_scale_1")
                                   if k in metrics},
        **({"linear_gene_scores": result.linear_gene_scores} if result.linear_gene_scores else {}),
        **{k: metrics[k] for k in ("test_ece_before", "test_ece_after", "test_ece_floor") if k in metrics},
        "calibration": result.calibration,
        "best_epoch": result.best_epoch, "validation": {k: round(v, 4) for k, v in result.validation_metrics().items()},
        "train_seconds": round(result.train_seconds, 1), "seconds": round(time.perf_counter() - started, 1),
        "n_train": int(len(train) - len(result.validation_cells)), "n_validation": int(len(result.validation_cells)),
        # The recipe as planned (`soft_token_rms` "auto" stays "auto" on a bundle), so that runs compare by recipe.
        "n_test": int(len(keep)), "changes": changes, "recipe": planned["recipe"],
        "soft_token_rms": recipe.soft_token_rms,
        "device": str(result.model.device), "backbone_dtype": str(result.model.model.backbone_dtype),
        "epochs": epochs,
    }


def save_run_logits(logits_dir, job, result, logits, references, test_cells, linear=None) -> None:
    """One run's test logits (float32), reference label ids and test cell positions as safetensors (and, for a model
    with linear gene scores, their share of the logits as `linear_gene_scores`); the label order and the validation
    temperature in its metadata."""
    from safetensors.numpy import save_file

    Path(logits_dir).mkdir(parents=True, exist_ok=True)
    name = f"{job['option']}__{job['dataset']}__{job['split']}__seed{job['seed']}.safetensors"
    labels = sorted(result.label2id, key=result.label2id.get)
    save_file({"logits": np.ascontiguousarray(logits, dtype=np.float32),
               "references": np.asarray(references, dtype=np.int64),
               "test_cells": np.asarray(test_cells, dtype=np.int64),
               **({} if linear is None else {"linear_gene_scores": np.ascontiguousarray(linear, dtype=np.float32)})},
              str(Path(logits_dir) / name),
              metadata={"labels": json.dumps(labels), "temperature": json.dumps((result.calibration or {}).get(
                  "temperature", 1.0))})


def embedding_probe(result, train_cells, train_labels, test_embeddings, references, gene_names, batch_size) -> dict:
    """Logistic regression (L2, C=1, on standardised features; plain and class-balanced) fitted on the trained model's
    cell embeddings of its own training cells and scored on the test cells' (`test_embeddings`): paired with the
    model's head on the same run, so that the two differ by the head alone and not by the seed."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train_features = predict(result.model, result.processor(train_cells, gene_names=gene_names, return_tensors="pt"),
                             batch_size)[1].numpy()
    train_ids = np.array([result.label2id[label] for label in train_labels])
    scaler = StandardScaler().fit(train_features)
    train_features, test_features = scaler.transform(train_features), scaler.transform(test_embeddings)
    probe = {}
    for name, class_weight in (("plain", None), ("balanced", "balanced")):
        classifier = LogisticRegression(C=1.0, max_iter=2000, class_weight=class_weight).fit(train_features, train_ids)
        probe[name] = score(references, classifier.predict(test_features))
    return probe


def _worker(jobs, out, lock, bundle, device, threads, deadline, overrides, logits_dir=None, probes=True):
    import torch

    torch.set_num_threads(threads)
    import logging

    logging.disable(logging.WARNING)
    while True:
        with lock:
            if not jobs or (deadline and time.time() > deadline):
                return
            job = jobs.pop(0)
        try:
            record = run_job(job, bundle, device, overrides, logits_dir, probes)
        except Exception as error:  # one failed job must not stop the screen
            record = {**{k: job[k] for k in ("option", "dataset", "split", "seed")}, "error": repr(error)[:500]}
        record["host"] = platform.node()
        with lock:
            with open(out, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        print(json.dumps({k: record.get(k) for k in ("option", "dataset", "split", "seed", "accuracy", "macro_f1",
                                                     "best_epoch", "seconds", "error")}), flush=True)


def planned_recipe(option: str, overrides=None) -> dict:
    """`{"recipe", "changes"}` as a record of `option` (with `--set` overrides) run today would carry them."""
    from scinterpreter.recipe import Recipe

    changes = {**parse_option(option), **(overrides or {})}
    names = {f.name for f in fields(Recipe)}
    return {"recipe": asdict(replace(Recipe(), **{k: v for k, v in changes.items() if k in names})), "changes": changes}


def make_jobs(options, split_names, seeds, skip_done=None, overrides=None):
    """The runs to do; a run is done when `skip_done` holds one with the same recipe today (`option_against_today`),
    whatever option name it ran under, so that a run of an older default is not taken for today's."""
    done = set()
    if skip_done and Path(skip_done).exists():
        for line in Path(skip_done).read_text().splitlines():
            record = json.loads(line)
            if "error" not in record and "recipe" in record:
                done.add((option_against_today(record), record["dataset"], record["split"], record["seed"]))
    jobs = []
    for seed in seeds:  # every option and split once before any is repeated with another seed
        for option in options:
            today = option_against_today(planned_recipe(option, overrides))
            for dataset, split, split_file, fold in splits(split_names):
                if (today, dataset, split, seed) not in done:
                    jobs.append({"option": option, "dataset": dataset, "split": split, "split_file": str(split_file),
                                 "fold": fold, "seed": seed})
    return jobs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--options", nargs="+", default=["default"], help=f"from {sorted(OPTIONS)}, or joined by +")
    parser.add_argument("--splits", nargs="*", help="datasets or split names (default: all 10)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", required=True, help="JSONL file the records are appended to (finished runs skipped)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--bundle", default=None, help="a folder from benchmarks/pack_device_bundle.py")
    parser.add_argument("--device", default=None, help="cpu, or leave out for the GPU when there is one")
    parser.add_argument("--deadline", type=float, default=0, help="start no run after this many seconds")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="override a field in every run (JSON values), e.g. num_train_epochs=1 for a smoke test")
    parser.add_argument("--logits_dir", default=None,
                        help="also save each run's test logits here (safetensors), for benchmarks/seed_ensemble.py")
    parser.add_argument("--no_probes", action="store_true",
                        help="skip the embedding probe and the refitted-reference scoring (a faster screen)")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    for option in args.options:
        parse_option(option)
    jobs = make_jobs(args.options, args.splits, args.seeds, skip_done=args.out, overrides=overrides)
    print(f"{len(jobs)} runs, {args.workers} at a time", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.deadline if args.deadline else 0
    if args.workers == 1:
        _worker(jobs, args.out, multiprocessing.Lock(), args.bundle, args.device, os.cpu_count() or 1, deadline,
                overrides, args.logits_dir, not args.no_probes)
        return
    context = multiprocessing.get_context("spawn")
    manager = context.Manager()
    shared_jobs, lock = manager.list(jobs), manager.Lock()
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    workers = [context.Process(target=_worker, args=(shared_jobs, args.out, lock, args.bundle, args.device, threads,
                                                     deadline, overrides, args.logits_dir, not args.no_probes))
               for _ in range(args.workers)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


if __name__ == "__main__":
    main()
