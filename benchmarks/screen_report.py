"""Compares recipe options run by `benchmarks/recipes.py` with the default, split by split, on the seeds both ran:
the report of a screen (one change at a time), computed from the JSONL records alone.

    python benchmarks/screen_report.py benchmarks/records/recipes_cpu_2026-11-26.jsonl \
        benchmarks/records/recipes_cpu_2026-11-27.jsonl --seeds 0 --out docs/benchmarks/screen_2026-11-27.md

`--options` keeps only the named options' columns (as `recipes.option_against_today` names the runs).
"""

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipes import option_against_today  # noqa: E402


def load_records(paths) -> dict:
    """`{(option, dataset, split): {seed: record}}`, each run under the option its recipe is today
    (`recipes.option_against_today`: a run of an older default is not today's `default`); a later file's run
    replaces an earlier one's."""
    runs = defaultdict(dict)
    for path in paths:
        for line in Path(path).read_text().splitlines():
            record = json.loads(line)
            if "error" not in record:
                option = option_against_today(record) if "recipe" in record else record["option"]
                runs[(option, record["dataset"], record["split"])][record["seed"]] = record
    return runs


def screen_table(runs: dict, baseline: str, seeds=None, metric: str = "macro_f1", options=None) -> tuple[str, dict]:
    """A Markdown table of `metric` per split (rows) and option (columns; all but the baseline unless `options`
    names some), each option on the seeds it shares with `baseline` there, with the difference from the baseline on
    those seeds; and a summary per option."""
    options = options or sorted({option for option, _, _ in runs} - {baseline})
    splits = sorted({(dataset, split) for _, dataset, split in runs})
    header = f"| dataset | split | {baseline} | " + " | ".join(options) + " |"
    lines = [header, "|" + "---|" * (3 + len(options))]
    summary = {option: {"differences": [], "values": [], "ahead": 0, "splits": 0} for option in options}
    for dataset, split in splits:
        base = runs.get((baseline, dataset, split), {})
        cells = []
        base_seeds = set(base) if seeds is None else set(base) & set(seeds)
        for option in options:
            run = runs.get((option, dataset, split), {})
            shared = sorted(base_seeds & set(run))
            if not shared:
                cells.append("-")
                continue
            value = float(np.mean([run[seed][metric] for seed in shared]))
            difference = value - float(np.mean([base[seed][metric] for seed in shared]))
            summary[option]["differences"].append(difference)
            summary[option]["values"].append(value)
            summary[option]["splits"] += 1
            summary[option]["ahead"] += difference >= 0
            cells.append(f"{value:.3f} ({difference:+.3f}; seeds {','.join(map(str, shared))})")
        base_value = f"{np.mean([base[seed][metric] for seed in sorted(base_seeds)]):.3f}" if base_seeds else "-"
        lines.append(f"| {dataset} | {split} | {base_value} | " + " | ".join(cells) + " |")
    lines.append("| **mean (option against default on the same splits and seeds)** | | | " + " | ".join(
        f"{np.mean(summary[o]['values']):.3f} against {np.mean(summary[o]['values']) - np.mean(summary[o]['differences']):.3f}: "
        f"{np.mean(summary[o]['differences']):+.3f} over {summary[o]['splits']} splits, ahead or level on "
        f"{summary[o]['ahead']}" if summary[o]["splits"] else "-" for o in options) + " |")
    for option in options:
        summary[option]["mean_difference"] = (float(np.mean(summary[option]["differences"]))
                                              if summary[option]["splits"] else None)
        summary[option]["mean"] = float(np.mean(summary[option]["values"])) if summary[option]["splits"] else None
    return "\n".join(lines), summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("records", nargs="+", help="JSONL files from benchmarks/recipes.py")
    parser.add_argument("--baseline", default="default")
    parser.add_argument("--seeds", nargs="*", type=int, default=None, help="compare on these seeds only")
    parser.add_argument("--metric", default="macro_f1", choices=["macro_f1", "accuracy"])
    parser.add_argument("--out", default=None, help="also write the report here (Markdown, and .json beside it)")
    parser.add_argument("--options", nargs="*", default=None,
                        help="only these options' columns, as the records are named today (default: all)")
    args = parser.parse_args(argv)
    runs = load_records(args.records)
    table, summary = screen_table(runs, args.baseline, args.seeds, args.metric, args.options)
    command = "python benchmarks/screen_report.py " + " ".join(args.records) + (
        f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds is not None else "") + (
        f" --options {' '.join(args.options)}" if args.options else "") + (
        f" --metric {args.metric}" if args.metric != "macro_f1" else "") + (f" --out {args.out}" if args.out else "")
    report = (f"# Screen: each option against `{args.baseline}` on the same seeds\n\nMade by `{command}`. Test "
              f"{args.metric.replace('_', '-')} of the last epoch, mean over the seeds both ran on the split (in "
              f"brackets: the difference from `{args.baseline}` on those seeds).\n\n{table}\n")
    print(report)
    if args.out:
        Path(args.out).write_text(report)
        Path(args.out).with_suffix(".json").write_text(json.dumps(
            {option: {k: v for k, v in values.items() if k not in ("differences", "values")} for option, values in summary.items()},
            indent=1))


if __name__ == "__main__":
    main()
