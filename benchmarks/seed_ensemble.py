"""Does averaging the predictions of models trained with different seeds beat one model? Reads the test logits that
`benchmarks/recipes.py --logits_dir` saves per run and, per split, compares each seed alone with the ensemble of all
its seeds (mean of the temperature-scaled probabilities): the variance lever, measured without a new training. Each
member keeps its own validation temperature: the seeds hold out different validation cells, so none is clean for a
temperature of the average.

    python benchmarks/recipes.py --splits lobo_5p --seeds 0 1 2 --out benchmarks/records/recipes_cpu_seed_ensemble.jsonl \
        --logits_dir benchmarks/records/test_logits
    python benchmarks/seed_ensemble.py benchmarks/records/test_logits --out docs/benchmarks/seed_ensemble
"""

import argparse
import json
import sys
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from splits import best_logistic_regression, score  # noqa: E402

from scinterpreter.calibration import calibrated_ece_floor, expected_calibration_error, softmax  # noqa: E402


def load_runs(logits_dir) -> dict:
    """`{(option, dataset, split): {seed: (calibrated probabilities, reference ids, test cells, labels)}}`."""
    from safetensors import safe_open

    runs = defaultdict(dict)
    for path in sorted(Path(logits_dir).glob("*.safetensors")):
        option, dataset, split, seed = path.stem.split("__")
        with safe_open(str(path), "np") as handle:
            metadata = handle.metadata()
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        probabilities = softmax(tensors["logits"], json.loads(metadata["temperature"]))
        runs[(option, dataset, split)][int(seed.removeprefix("seed"))] = (
            probabilities, tensors["references"], tensors["test_cells"], json.loads(metadata["labels"]))
    return runs


def ensemble_scores(seeds: dict) -> dict:
    """Each seed alone, the mean over seeds, every pair's ensemble and the ensemble of all seeds (macro-F1, accuracy
    and ECE of the averaged probabilities with its floor)."""
    first = next(iter(seeds.values()))
    for probabilities, references, cells, labels in seeds.values():  # same test cells and label order in every run
        if not (np.array_equal(cells, first[2]) and labels == first[3]):
            raise SystemExit("runs of one split differ in their test cells or label order")
    references = first[1]
    single = {seed: score(references, run[0].argmax(-1)) for seed, run in sorted(seeds.items())}

    def averaged(members):
        probabilities = np.mean([seeds[seed][0] for seed in members], axis=0)
        return probabilities, score(references, probabilities.argmax(-1))

    pairs = [averaged(pair)[1]["macro_f1"] for pair in combinations(sorted(seeds), 2)]
    probabilities, together = averaged(sorted(seeds))
    single_ece = [expected_calibration_error(run[0], references) for run in seeds.values()]
    return {
        "seeds": sorted(seeds), "n_test": int(len(references)),
        "single_macro_f1": {seed: s["macro_f1"] for seed, s in single.items()},
        "single_accuracy": {seed: s["accuracy"] for seed, s in single.items()},
        "single_mean_macro_f1": round(float(np.mean([s["macro_f1"] for s in single.values()])), 4),
        "single_mean_accuracy": round(float(np.mean([s["accuracy"] for s in single.values()])), 4),
        "pair_mean_macro_f1": round(float(np.mean(pairs)), 4) if pairs else None,
        "ensemble_macro_f1": together["macro_f1"], "ensemble_accuracy": together["accuracy"],
        "single_mean_ece": round(float(np.mean(single_ece)), 4),
        "ensemble_ece": round(expected_calibration_error(probabilities, references), 4),
        "ensemble_ece_floor": round(calibrated_ece_floor(probabilities), 4),
    }


def render(saved: dict) -> str:
    """The Markdown report of a saved JSON (`{"meta", "best_logistic_regression", "rows"}`)."""
    logistic = {(row["dataset"], row["split"]): row["macro_f1"] for row in saved["best_logistic_regression"]}
    lines = ["# Seed ensembles: one model against the average of several seeds' predictions", "",
             f"Made by `{saved['meta']['command']}` on {saved['meta']['date']}. Test macro-F1 of each seed alone (the "
             "product's `fit` through `benchmarks/recipes.py`), their mean, the mean over every pair of seeds "
             "averaged, and all seeds averaged (mean of the temperature-scaled probabilities); accuracy and test ECE "
             "(15 bins) of one seed (mean) and of the ensemble (its floor in brackets). Computed from the saved test "
             "logits alone.", "",
             "| option | dataset | split | seeds: macro-F1 | mean of one | pairs | all seeds | gain | best LogReg | "
             "accuracy one / all | ECE one / all (floor) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    gains = []
    for row in saved["rows"]:
        gain = row["ensemble_macro_f1"] - row["single_mean_macro_f1"]
        if len(row["seeds"]) >= 3:
            gains.append(gain)
        seeds = ", ".join(f"{seed}: {value:.3f}" for seed, value in row["single_macro_f1"].items())
        pairs = "-" if row["pair_mean_macro_f1"] is None else f"{row['pair_mean_macro_f1']:.3f}"
        reference = logistic.get((row["dataset"], row["split"]))
        lines.append(
            f"| {row['option']} | {row['dataset']} | {row['split']} | {seeds} | {row['single_mean_macro_f1']:.3f} | "
            f"{pairs} | {row['ensemble_macro_f1']:.3f} | {gain:+.3f} | "
            f"{'-' if reference is None else f'{reference:.3f}'} | "
            f"{row['single_mean_accuracy']:.3f} / {row['ensemble_accuracy']:.3f} | {row['single_mean_ece']:.3f} / "
            f"{row['ensemble_ece']:.3f} ({row['ensemble_ece_floor']:.3f}) |")
    if gains:
        lines += ["", f"Mean gain of the ensemble over one seed, on the {len(gains)} splits with 3 or more seeds: "
                      f"{np.mean(gains):+.3f} macro-F1 (from {min(gains):+.3f} to {max(gains):+.3f})."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    import datetime

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logits_dir")
    parser.add_argument("--results", default=str(REPO / "docs" / "benchmarks" / "results.json"),
                        help="results.json whose logistic regressions are shown beside")
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md (else print the report)")
    parser.add_argument("--render", action="store_true", help="only render OUT.md again from OUT.json")
    args = parser.parse_args(argv)
    if args.render:
        Path(f"{args.out}.md").write_text(render(json.loads(Path(f"{args.out}.json").read_text())))
        return
    rows = [{"option": option, "dataset": dataset, "split": split, **ensemble_scores(seeds)}
            for (option, dataset, split), seeds in sorted(load_runs(args.logits_dir).items())]
    command = "python benchmarks/seed_ensemble.py " + " ".join(argv if argv is not None else sys.argv[1:])
    saved = {"meta": {"command": command, "date": datetime.date.today().isoformat()},
             "best_logistic_regression": [{"dataset": d, "split": s, "macro_f1": f}
                                          for (d, s), f in sorted(best_logistic_regression(
                                              json.loads(Path(args.results).read_text())).items())],
             "rows": rows}
    if args.out is None:
        print(render(saved))
        return
    Path(f"{args.out}.json").write_text(json.dumps(saved, indent=1) + "\n")
    Path(f"{args.out}.md").write_text(render(saved))


if __name__ == "__main__":
    main()
