"""How far can a temperature take the test ECE, and is the product's estimate of it the best one? From the saved test
logits of the default's runs (10 splits x 3 seeds, `benchmarks/records/test_logits_2026-12-07*`), per split:

- `recorded`: the test ECE after the temperature the product fitted on the run's validation cells (as recorded);
- `best_temperature`: the test ECE after the temperature fitted on the test cells themselves (no temperature can do
  better by that fit's measure: the ceiling of temperature scaling), and `floor`, the ECE a perfectly calibrated model
  shows on as many cells (`calibrated_ece_floor`);
- four estimators of the temperature from few cells, each fitted on `n_validation` test cells drawn at random (as
  many as the run's validation cells) and scored on the rest, 100 draws: `nll` (the product's, the negative
  log-likelihood's minimum), `nll_at_least_1` (the same, never below 1), `accuracy_matched` (mean confidence equal to
  the rule-of-succession accuracy `(correct + 1) / (n + 2)`), `smoothed_nll` (the likelihood of labels smoothed by
  `1 / (n + 2)`). The draws share the test cells' distribution, so this measures the estimators' noise on few cells,
  not a validation set's shift from the test cells.

    python benchmarks/temperature_probe.py     # ~1 min; writes docs/benchmarks/temperature_probe.{json,md}
"""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from splits import REPO, splits  # noqa: E402

sys.path.insert(0, str(REPO))
from scinterpreter.calibration import (calibrated_ece_floor, expected_calibration_error,  # noqa: E402
                                       fit_temperature, softmax)

RECORDS = REPO / "benchmarks" / "records"
RUNS = ["2026-12-07", "2026-12-07b", "2026-12-07c"]  # the default's seeds 0, 1, 2 (option linear_panel)
OPTION, DRAWS = "linear_panel", 100
BOUNDS = (0.05, 20.0)


def accuracy_matched(logits, labels):
    from scipy.optimize import brentq

    target = ((logits.argmax(-1) == labels).sum() + 1) / (len(labels) + 2)
    gap = lambda log_t: softmax(logits, np.exp(log_t)).max(-1).mean() - target  # noqa: E731
    low, high = np.log(BOUNDS[0]), np.log(BOUNDS[1])
    if gap(low) < 0 or gap(high) > 0:
        return BOUNDS[0] if gap(low) < 0 else BOUNDS[1]
    return float(np.exp(brentq(gap, low, high)))


def smoothed_nll(logits, labels):
    from scipy.optimize import minimize_scalar

    n, k = logits.shape
    smoothing = 1 / (n + 2)
    targets = np.full((n, k), smoothing / (k - 1))
    targets[np.arange(n), labels] = 1 - smoothing
    loss = lambda log_t: -(targets * np.log(softmax(logits, np.exp(log_t)) + 1e-12)).sum(1).mean()  # noqa: E731
    return float(np.exp(minimize_scalar(loss, bounds=np.log(BOUNDS), method="bounded").x))


ESTIMATORS = {"nll": fit_temperature, "nll_at_least_1": lambda logits, labels: max(1.0, fit_temperature(logits, labels)),
              "accuracy_matched": accuracy_matched, "smoothed_nll": smoothed_nll}


def main():
    from safetensors.numpy import load_file

    records = {}
    for run in RUNS:
        for line in (RECORDS / f"recipes_cpu_{run}.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record.get("option") == OPTION:
                records[(record["dataset"], record["split"], record["seed"])] = (record, run)
    rng = np.random.default_rng(0)
    out = {}
    for dataset, split, _, _ in splits():
        rows = []
        for (name, split_name, seed), (record, run) in sorted(records.items()):
            if (name, split_name) != (dataset, split):
                continue
            saved = load_file(str(RECORDS / f"test_logits_{run}" / f"{OPTION}__{dataset}__{split}__seed{seed}.safetensors"))
            logits, labels = saved["logits"].astype(np.float64), saved["references"]
            best = fit_temperature(logits, labels)
            row = {"recorded": record["test_ece_after"],
                   "best_temperature": expected_calibration_error(softmax(logits, best), labels),
                   "floor": calibrated_ece_floor(softmax(logits, record["calibration"]["temperature"]))}
            n_fit = min(record["n_validation"], len(labels) // 2)
            draws = [rng.permutation(len(labels)) for _ in range(DRAWS)]
            for estimator, fit in ESTIMATORS.items():
                row[estimator] = float(np.mean([
                    expected_calibration_error(softmax(logits[d[n_fit:]], fit(logits[d[:n_fit]], labels[d[:n_fit]])),
                                               labels[d[n_fit:]]) for d in draws]))
            rows.append(row)
        label = f"{dataset} {split}" if split != "fixed" else dataset
        out[label] = {key: round(float(np.mean([row[key] for row in rows])), 4) for key in rows[0]}
        print(label, out[label], flush=True)
    keys = list(next(iter(out.values())))
    mean = {key: np.mean([v[key] for v in out.values()]) for key in keys}
    at_most = {key: sum(v[key] <= 0.03 for v in out.values()) for key in keys}
    from linear_c_probe import write_probe_report

    write_probe_report(
        "temperature_probe", out, keys, "Temperature scaling: its ceiling, and estimators of it from few cells",
        "`python benchmarks/temperature_probe.py`: test ECE (15 bins), mean of the default's 3 seeds per split. "
        "`recorded`: after the product's validation temperature; `best_temperature`: after the temperature fitted "
        "on the test cells themselves (the ceiling of temperature scaling); `floor`: what a perfectly calibrated model "
        "shows on as many cells. The last four: each estimator fitted on as many random test cells as the run had "
        "validation cells and scored on the others (100 draws; the floor of those smaller sets is higher). Splits at "
        "or under .03: " + ", ".join(f"{key} {at_most[key]}" for key in keys) + "; means: "
        + ", ".join(f"{key} {mean[key]:.4f}" for key in keys) + ".")
    print((REPO / "docs" / "benchmarks" / "temperature_probe.md").read_text())


if __name__ == "__main__":
    main()
