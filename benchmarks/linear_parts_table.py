"""Per-split table of product runs and their parts, against the session-15 default and the better logistic regression.

Reads a `benchmarks/recipes.py` records file (runs of one option) and prints, per split, each seed's test macro-F1,
the mean with accuracy, the same runs' sum with the linear gene scores as fitted (`linear_gene_scale_1`), the head
alone, the linear gene scores alone, the session-15 default on the same seeds
(`benchmarks/records/recipes_cpu_2026-12-07b.jsonl`), the better logistic regression
(`benchmarks/records/baselines_2026-11-26.json`) and test ECE after calibration (floor). Seconds; no training.

    python benchmarks/linear_parts_table.py benchmarks/records/recipes_cpu_2026-12-07c.jsonl --option linear_panel
"""
import argparse
import collections
import json
from pathlib import Path

import numpy as np

RECORDS = Path(__file__).resolve().parent / "records"
NAMES = {"baron_human_pancreas/fixed": "Baron human", "baron_mouse_pancreas/fixed": "Baron mouse",
         "mouse_immune_actinn/fixed": "mouse immune", "pbmc3k_clustifyr/fixed": "PBMC 3k",
         "pbmc4k_soupx/fixed": "PBMC 4k", "pbmc68k_reduced_scanpy/fixed": "PBMC 68k",
         "pbmc_3batch_symphony/fixed": "PBMC 3-batch", "pbmc_3batch_symphony/lobo_3pv1": "held-out 3pv1",
         "pbmc_3batch_symphony/lobo_3pv2": "held-out 3pv2", "pbmc_3batch_symphony/lobo_5p": "held-out 5p"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("records")
    parser.add_argument("--option", default="linear_panel", help="the records' option to tabulate")
    args = parser.parse_args(argv)
    runs = [json.loads(line) for line in Path(args.records).read_text().splitlines()]
    runs = [r for r in runs if r["option"] == args.option and not r.get("error")]
    earlier = [json.loads(line) for line in (RECORDS / "recipes_cpu_2026-12-07b.jsonl").read_text().splitlines()]
    earlier = [r for r in earlier if r["option"] == "default"]
    baselines = json.loads((RECORDS / "baselines_2026-11-26.json").read_text())["records"]
    best = collections.defaultdict(float)
    for record in baselines:
        if record["method"].startswith("logistic regression"):
            key = f"{record['dataset']}/{record['split']}"
            best[key] = max(best[key], record["macro_f1"])
    by_split, earlier_by_split = collections.defaultdict(list), collections.defaultdict(list)
    for r in runs:
        by_split[f"{r['dataset']}/{r['split']}"].append(r)
    for r in earlier:
        earlier_by_split[f"{r['dataset']}/{r['split']}"].append(r)
    part = lambda rs, key: np.mean([r[key]["macro_f1"] if key in r else r["macro_f1"] for r in rs])  # noqa: E731
    print("| split | seeds | option (accuracy) | scores as fitted | head alone | linear gene scores alone | "
          "session-15 default, same seeds | better logistic regression | difference | test ECE after (floor) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    columns, level = collections.defaultdict(list), 0
    for key, name in NAMES.items():
        rs = sorted(by_split.get(key, []), key=lambda r: r["seed"])
        if not rs:
            continue
        seeds = {r["seed"] for r in rs}
        values = {"option": np.mean([r["macro_f1"] for r in rs]), "accuracy": np.mean([r["accuracy"] for r in rs]),
                  "as_fitted": part(rs, "linear_gene_scale_1"), "head": part(rs, "without_linear_gene_scores"),
                  "linear": part(rs, "linear_gene_scores_only"),
                  "session15": np.mean([r["macro_f1"] for r in earlier_by_split[key] if r["seed"] in seeds]),
                  "best_lr": best[key], "ece": np.mean([r["test_ece_after"] for r in rs]),
                  "floor": np.mean([r["test_ece_floor"] for r in rs])}
        for column, value in values.items():
            columns[column].append(value)
        difference = values["option"] - values["best_lr"]
        level += difference >= 0
        print(f"| {name} | {' / '.join('%.3f' % r['macro_f1'] for r in rs)} | **{values['option']:.3f}** "
              f"({values['accuracy']:.3f}) | {values['as_fitted']:.3f} | {values['head']:.3f} | {values['linear']:.3f} "
              f"| {values['session15']:.3f} | {values['best_lr']:.3f} | {difference:+.3f} | {values['ece']:.3f} "
              f"({values['floor']:.3f}) |")
    mean = {column: np.mean(values) for column, values in columns.items()}
    print(f"| **mean** ({len(columns['option'])} splits) | | **{mean['option']:.3f}** ({mean['accuracy']:.3f}) | "
          f"{mean['as_fitted']:.3f} | {mean['head']:.3f} | {mean['linear']:.3f} | {mean['session15']:.3f} | "
          f"{mean['best_lr']:.3f} | {mean['option'] - mean['best_lr']:+.3f} | {mean['ece']:.3f} ({mean['floor']:.3f}) |")
    print(f"\nLevel with or ahead of the better logistic regression on {level} of {len(columns['option'])} splits.")


if __name__ == "__main__":
    main()
