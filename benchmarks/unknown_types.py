"""Can scInterpreter say "I don't know this cell type"? Each of three cell types is left out of training in turn (on
Baron human and PBMC 3k), a model is trained by the product's `fit` on the remaining training cells, and every
cell of the left-out type (none of which was trained on) should come out `Unassigned`, while the test cells of
the known types should keep their label.

    python benchmarks/unknown_types.py            # 6 trainings, ~35 min on 2 CPU cores; then the report
    python benchmarks/unknown_types.py --seed 1   # 6 more (saved beside seed 0's); the report scores every saved run
    python benchmarks/unknown_types.py --report   # the report again from the saved per-cell outputs
    python benchmarks/unknown_types.py --render   # only the markdown, from docs/benchmarks/unknown_types.json

For every run it saves the logits and cell embeddings of the training, validation, test and left-out cells
(outputs/unknown_types/*.safetensors) and scores four "unknown" scores: the calibrated maximum probability, the
energy (the temperature-scaled log-sum-exp of the logits), the cosine distance of the cell's embedding to the
nearest known type's mean training embedding, and its mean cosine distance to its 10 nearest training cells. The
models are trained with `unassigned_score="centroid_distance"` (which changes only what calibration stores), so each
run also saves the product's own score, from the centroids stored in the model (`centroid_distance`), scored as a
fifth column, `stored_centroid_distance` (runs saved before it lack it, and the column is left out then), and the
product's default, `max_probability_and_centroid_distance` (a cell is flagged when its calibrated probability or its
stored centroids' similarity falls below its own threshold, the two fitted together), as a sixth. For each:
AUROC for telling the left-out cells from the known test cells, and, at the automatic threshold the product fits on
the validation cells
(`scinterpreter.calibration.fit_unassigned_threshold`), how many left-out cells are flagged and how many known test
cells are wrongly flagged. Writes docs/benchmarks/unknown_types.{json,md}.
"""

import argparse
import json
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from splits import REPO, load_split, predict, splits  # noqa: E402

sys.path.insert(0, str(REPO))

LEFT_OUT = {
    "baron_human_pancreas": ["ductal", "delta", "activated_stellate"],
    "pbmc3k_clustifyr": ["B", "NK", "FCGR3A+ Mono"],
}
OUT = REPO / "outputs" / "unknown_types"
REPORT = REPO / "docs" / "benchmarks" / "unknown_types.json"


def run_name(dataset, cell_type, seed=0):
    """The saved run's file stem (seed 0's runs keep the stem they were first saved under)."""
    return f"{dataset}__{cell_type.replace(' ', '_').replace('+', 'p')}" + (f"__seed{seed}" if seed else "")


def train_one(dataset, cell_type, seed):
    from safetensors.torch import save_file
    from transformers import set_seed

    from scinterpreter.training import Recipe, ScInterpreterTrainingArguments, fit

    (dataset, split, split_file, fold), = [s for s in splits([dataset]) if s[1] == "fixed"]
    adata, labels, train, test = load_split(dataset, split_file, fold)
    known_train = train[labels[train] != cell_type]
    left_out = np.concatenate([train, test])[labels[np.concatenate([train, test])] == cell_type]
    known_test = test[labels[test] != cell_type]
    with tempfile.TemporaryDirectory() as output_dir:
        args = ScInterpreterTrainingArguments(output_dir=output_dir, seed=seed, disable_tqdm=True,
                                              logging_strategy="epoch")
        set_seed(seed)
        result = fit(adata[known_train], labels[known_train], Recipe(unassigned_score="centroid_distance"), args)
    validation = known_train[result.validation_cells]
    fitted_train = np.setdiff1d(known_train, validation)
    tensors, label_ids = {}, {}
    for name, positions in (("train", fitted_train), ("validation", validation), ("test", known_test),
                            ("left_out", left_out)):
        logits, embeddings = predict(result.model, result.processor(adata[positions], return_tensors="pt"))
        tensors[f"{name}.logits"], tensors[f"{name}.embeddings"] = logits.contiguous(), embeddings.contiguous()
        tensors[f"{name}.stored_centroid_distance"] = result.model.centroid_distance(embeddings).detach().contiguous()
        label_ids[name] = [result.label2id.get(label, -1) for label in labels[positions]]
    import torch

    for name, ids in label_ids.items():
        tensors[f"{name}.labels"] = torch.tensor(ids)
    metadata = {"dataset": dataset, "left_out": cell_type, "seed": str(seed),
                "temperature": str(result.model.config.calibration_temperature or 1.0),
                "unassigned_threshold": str(getattr(result.model.config, "unassigned_threshold", None)),
                "classes": json.dumps(list(result.label2id)), "train_seconds": f"{result.train_seconds:.1f}"}
    OUT.mkdir(parents=True, exist_ok=True)
    save_file(tensors, OUT / f"{run_name(dataset, cell_type, seed)}.safetensors", metadata=metadata)
    print(f"{dataset} without {cell_type}: {result.train_seconds:.0f} s of training", flush=True)


def scores(outputs, temperature, centroids, train_embeddings, k=10):
    """Per cell, higher = more likely a type the model does not know."""
    import torch

    logits, embeddings = outputs["logits"], outputs["embeddings"]
    probabilities = (logits / temperature).softmax(-1)
    normalised = torch.nn.functional.normalize(embeddings, dim=-1)
    result = {
        "max_probability": (1 - probabilities.max(-1).values).numpy(),
        "energy": (-temperature * torch.logsumexp(logits / temperature, -1)).numpy(),
        "embedding_distance": (1 - (normalised @ centroids.T).max(-1).values).numpy(),
        "knn_distance": (1 - (normalised @ train_embeddings.T).topk(k, dim=-1).values.mean(-1)).numpy(),
    }
    if "stored_centroid_distance" in outputs:  # the product's score, from the centroids the model stores
        result["stored_centroid_distance"] = outputs["stored_centroid_distance"].numpy()
    return result


def combine_probability_and_centroid(per_part) -> dict:
    """Adds the product's `max_probability_and_centroid_distance` score to each part's scores (in place): the
    thresholds of the calibrated probability and of the stored centroids' similarity fitted together on the validation
    cells (`fit_unassigned_thresholds`), the confidence `min(probability, similarity + t_probability -
    t_similarity)`, as `ScInterpreterForCellAnnotation.confidence` gives it. Returns `{score: confidence threshold}`
    for it (empty for runs saved without the stored centroids' score)."""
    from scinterpreter.calibration import fit_unassigned_thresholds

    if "stored_centroid_distance" not in per_part["validation"]:
        return {}
    probability = {name: 1 - part["max_probability"] for name, part in per_part.items()}
    similarity = {name: 1 - part["stored_centroid_distance"] for name, part in per_part.items()}
    cut_probability, cut_similarity = fit_unassigned_thresholds(
        np.stack([probability["validation"], similarity["validation"]], 1))
    for name, part in per_part.items():
        part["max_probability_and_centroid_distance"] = -np.minimum(
            probability[name], similarity[name] + cut_probability - cut_similarity)
    return {"max_probability_and_centroid_distance": cut_probability}


def report(command="python benchmarks/unknown_types.py"):
    """Scores every saved run in outputs/unknown_types and writes docs/benchmarks/unknown_types.{json,md}."""
    import torch
    from safetensors import safe_open
    from sklearn.metrics import roc_auc_score

    from scinterpreter.calibration import UNASSIGNED_RATE, fit_unassigned_threshold

    rows = []
    for path in sorted(OUT.glob("*.safetensors")):
        with safe_open(path, "pt") as handle:
            metadata = handle.metadata()
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        parts = {name: {key.split(".", 1)[1]: value for key, value in tensors.items() if key.startswith(name + ".")}
                 for name in ("train", "validation", "test", "left_out")}
        temperature = float(metadata["temperature"])
        train_embeddings = torch.nn.functional.normalize(parts["train"]["embeddings"], dim=-1)
        train_labels = parts["train"]["labels"]
        centroids = torch.nn.functional.normalize(torch.stack(
            [train_embeddings[train_labels == label].mean(0) for label in train_labels.unique()]), dim=-1)
        per_part = {name: scores(parts[name], temperature, centroids, train_embeddings)
                    for name in ("validation", "test", "left_out")}
        thresholds = combine_probability_and_centroid(per_part)
        test_correct = (parts["test"]["logits"].argmax(-1) == parts["test"]["labels"]).numpy()
        row = {"dataset": metadata["dataset"], "left_out": metadata["left_out"], "seed": int(metadata["seed"]),
               "n_left_out": len(parts["left_out"]["labels"]), "n_known_test": len(parts["test"]["labels"]),
               "known_test_accuracy": round(float(test_correct.mean()), 4),
               "train_seconds": float(metadata["train_seconds"]), "scores": {}}
        for score in per_part["test"]:
            known, unknown = per_part["test"][score], per_part["left_out"][score]
            threshold = thresholds.get(score, fit_unassigned_threshold(-per_part["validation"][score], UNASSIGNED_RATE))
            flagged_known, flagged_unknown = known > -threshold, unknown > -threshold
            row["scores"][score] = {
                "auroc": round(float(roc_auc_score(np.r_[np.zeros(len(known)), np.ones(len(unknown))],
                                                   np.r_[known, unknown])), 4),
                "left_out_flagged": round(float(flagged_unknown.mean()), 4),
                "known_flagged": round(float(flagged_known.mean()), 4),
                "known_correct_flagged": round(float(flagged_known[test_correct].mean()), 4),
                "known_accuracy_of_kept": round(float(test_correct[~flagged_known].mean()), 4),
            }
        rows.append(row)
    if not rows:
        raise SystemExit(f"no saved runs in {OUT}: run without --report first")
    names = [score for score in rows[0]["scores"] if all(score in row["scores"] for row in rows)]
    mean = {score: {key: round(float(np.mean([row["scores"][score][key] for row in rows])), 4)
                    for key in rows[0]["scores"][score]} for score in names}
    result = {"date": str(date.today()), "command": command, "unassigned_rate": UNASSIGNED_RATE, "runs": rows,
              "mean": mean}
    REPORT.write_text(json.dumps(result, indent=1) + "\n")
    REPORT.with_suffix(".md").write_text(render(result))
    print(REPORT.with_suffix(".md").read_text())


MEAN_COLUMNS = {"auroc": "AUROC", "left_out_flagged": "left out flagged", "known_flagged": "known flagged",
                "known_correct_flagged": "known correct flagged",
                "known_accuracy_of_kept": "accuracy of the known cells kept"}


def render(result: dict) -> str:
    """The markdown report of an unknown_types.json, every figure taken from it."""
    from scinterpreter.calibration import UNASSIGNED_RATE

    names = list(result["mean"])
    seeds = sorted({row["seed"] for row in result["runs"]})
    if "unassigned_rate" in result:
        rate = f"it flags at most {result['unassigned_rate']:.0%} of them"
    else:
        rate = (f"it flags at most `UNASSIGNED_RATE` of them, {UNASSIGNED_RATE:.0%} in the product now; this JSON does "
                "not record the rate of its run")
    by_seed = len(seeds) > 1
    lines = [
        "# Unknown cell types: leave one type out of training",
        "",
        f"`{result['command']}` ({result['date']}, this CPU): for each dataset's fixed split, one cell type at a time "
        f"is removed from the training cells and the default recipe is trained (seed{'s' * (len(seeds) > 1)} "
        f"{', '.join(map(str, seeds))}) on the rest. The left-out type's cells (all of them, training and test split: "
        "the model saw none) should be flagged; the known types' test cells should not. The threshold is the "
        f"product's automatic one (`fit_unassigned_threshold` on the validation cells: {rate}).",
        "",
        "| dataset | left out (cells) | " + "seed | " * by_seed + "known test acc | " + " | ".join(
            f"{score}: AUROC / left out flagged / known flagged" for score in names) + " |",
        "|---|---|---|" + "---|" * (len(names) + by_seed),
    ]
    for row in result["runs"]:
        lines.append(f"| {row['dataset']} | {row['left_out']} ({row['n_left_out']}) | "
                     + f"{row['seed']} | " * by_seed + f"{row['known_test_accuracy']:.3f} | "
                     + " | ".join("{auroc:.3f} / {left_out_flagged:.2f} / {known_flagged:.2f}".format(
                         **row["scores"][score]) for score in names) + " |")
    lines.append("| **mean** | | | " + "| " * by_seed + " | ".join("**{auroc:.3f}** / {left_out_flagged:.2f} / {known_flagged:.2f}".format(
        **result["mean"][score]) for score in names) + " |")
    lines += ["", "Higher AUROC: the score tells the left-out cells from the known ones better. Known flagged: known "
              "test cells that would come out `Unassigned` at the automatic threshold (some of them misclassified "
              "anyway: see `known_correct_flagged` and `known_accuracy_of_kept` in the JSON). "
              "`max_probability_and_centroid_distance` flags a cell when either its calibrated probability or its "
              "similarity to the nearest stored centroid falls below its own threshold (`fit_unassigned_thresholds`: "
              "the two fitted together so that at most {:.0%} of the validation cells fall below either).".format(
                  result.get("unassigned_rate", UNASSIGNED_RATE)),
              "", f"Mean over the {len(result['runs'])} run{'s' * (len(result['runs']) > 1)}:", ""]
    columns = list(result["mean"][names[0]])  # reports written before some columns were scored have fewer
    lines += ["| score | " + " | ".join(MEAN_COLUMNS.get(column, column) for column in columns) + " |",
              "|---|" + "---|" * len(columns)]
    lines += [f"| {score} | " + " | ".join(f"{result['mean'][score][column]:.3f}" for column in columns) + " |"
              for score in names]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", action="store_true", help="only the report, scored again from the saved runs")
    parser.add_argument("--render", nargs="?", const=REPORT, type=Path, metavar="JSON",
                        help=f"only the markdown, from an unknown_types.json (default {REPORT.relative_to(REPO)}); "
                             "scores nothing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--datasets", nargs="*", default=list(LEFT_OUT))
    args = parser.parse_args(argv)
    if args.render:
        args.render.with_suffix(".md").write_text(render(json.loads(args.render.read_text())))
        return
    if not args.report:
        for dataset in args.datasets:
            for cell_type in LEFT_OUT[dataset]:
                if (OUT / f"{run_name(dataset, cell_type, args.seed)}.safetensors").exists():
                    continue
                started = time.perf_counter()
                train_one(dataset, cell_type, args.seed)
                print(f"  {time.perf_counter() - started:.0f} s in all", flush=True)
    report(" ".join(["python benchmarks/unknown_types.py", *(argv if argv is not None else sys.argv[1:])]))


if __name__ == "__main__":
    main()
