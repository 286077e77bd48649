"""Trains the models shipped in `scinterpreter/models/` with `train.py` (default recipe, seed 0, adapter-only) on
the training cells of the shared fixed splits, and records each run in docs/benchmarks/model_zoo.{json,md}.

    python scripts/train_model_zoo.py                       # all three, ~25 min on 2 CPU cores
    python scripts/train_model_zoo.py --models pbmc-human

The test cells of each split are held out of training (and out of the validation cells); their names ship with the
model (`held_out_cells.json`, `scinterpreter.models.held_out_cells(name)`), so that anyone can annotate cells the
model never saw.
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data" / "scrna"

from scinterpreter.models import MODEL_FILES, PROCESSOR_REFERENCE, REBUILT_PROCESSOR_KEYS, ZOO  # noqa: E402

MODELS = {
    "pancreas-human": {"dataset": "baron_human_pancreas", "species": "human", "tissue": "pancreas",
                       "trained_on": "Baron et al. 2016 human pancreas (GSE84133; the cells of the `came` sample "
                                     "data), the shared fixed split's training cells"},
    "pancreas-mouse": {"dataset": "baron_mouse_pancreas", "species": "mouse", "tissue": "pancreas",
                       "trained_on": "Baron et al. 2016 mouse pancreas (GSE84133), the shared fixed split's "
                                     "training cells"},
    "pbmc-human": {"dataset": "pbmc3k_clustifyr", "species": "human", "tissue": "blood (PBMC)",
                   "trained_on": "10x Genomics PBMC 3k with the Seurat tutorial's labels (clustifyr's copy), the "
                                 "shared fixed split's training cells"},
}


def train(name: str, output_root: Path) -> dict:
    """Runs `train.py` for the model; returns the record of the run."""
    entry = MODELS[name]
    data, split_file = SHARED / f"{entry['dataset']}.h5ad", SHARED / "splits" / f"{entry['dataset']}.json"
    label_column = json.loads(split_file.read_text()).get("label_key", "cell_type")
    output_dir = output_root / name
    command = [sys.executable, "train.py", "--dataset", str(data), "--label_column", label_column,
               "--split_file", str(split_file), "--adapter_only", "true", "--umap", "false", "--seed", "0",
               "--output_dir", str(output_dir)]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    return {"name": name, "dataset": entry["dataset"],
            "command": _portable(" ".join(["python"] + command[1:])), "seconds": round(time.perf_counter() - started, 1)}


def _portable(text: str) -> str:
    """Paths as the repository's reader sees them (../shared, outputs/), not this machine's."""
    return text.replace(str(SHARED), "../shared/data/scrna").replace(str(REPO) + "/", "")


def install(name: str, output_root: Path, record: dict) -> dict:
    """Copies the trained folder into the package (paths made portable, the card's usage pointed at the shipped
    model) and completes the run's record from its metrics.json."""
    entry, output_dir, target = MODELS[name], output_root / name, ZOO / name
    split = json.loads((SHARED / "splits" / f"{entry['dataset']}.json").read_text())
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    processor = json.loads((output_dir / "preprocessor_config.json").read_text())
    reference = {key: value for key, value in processor.items() if key not in REBUILT_PROCESSOR_KEYS}
    (target / PROCESSOR_REFERENCE).write_text(json.dumps(reference, indent=2, sort_keys=True) + "\n")
    for item in MODEL_FILES:
        if item == PROCESSOR_REFERENCE:
            continue
        text_or_bytes = (output_dir / item).read_bytes()
        if item.endswith((".json", ".md")):
            text = _portable(text_or_bytes.decode())
            for written in (str(output_dir), _portable(str(output_dir))):  # as train.py was given it
                text = text.replace(f'model="{written}"', f'model=scinterpreter.models.path("{name}")')
            text = text.replace("from transformers import pipeline\n", "import scinterpreter.models\n"
                                "from transformers import pipeline\n")
            text_or_bytes = text.encode()
        (target / item).write_bytes(text_or_bytes)
    config = json.loads((target / "config.json").read_text())
    config["zoo"] = {key: entry[key] for key in ("species", "tissue", "trained_on")}
    (target / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (target / "held_out_cells.json").write_text(json.dumps(split["test"]) + "\n")
    metrics = json.loads((target / "metrics.json").read_text())
    return {**record,
            "n_train_cells": metrics["n_train_cells"], "n_validation_cells": metrics["n_validation_cells"],
            "n_test_cells": metrics["n_test_cells"], "test": metrics["test"], "calibration": metrics["calibration"],
            "train_seconds": metrics["train_seconds"], "backbone_dtype": metrics["backbone_dtype"],
            "size_mb": round(sum(f.stat().st_size for f in target.iterdir()) / 1e6, 2)}


def write_records(records: dict):
    (REPO / "docs/benchmarks/model_zoo.json").write_text(json.dumps(
        {"date": str(date.today()), "command": "python scripts/train_model_zoo.py", "models": records}, indent=1) + "\n")
    lines = ["# Shipped models (`scinterpreter/models/`)", "",
             f"`python scripts/train_model_zoo.py` ({date.today()}, this CPU): `train.py` with the default recipe, seed "
             "0, `--adapter_only`, on the training cells of the shared fixed split; test figures on that split's "
             "held-out test cells (their names ship as `held_out_cells.json`). The ECE floor is what a perfectly "
             "calibrated model with the same probabilities would show on as many cells (sampling noise).", "",
             "| model | trained on | train / validation / test cells | test accuracy | test macro-F1 | test ECE "
             "before / after calibration (floor) | training | folder size |", "|---|---|---|---|---|---|---|---|"]
    for record in records.values():
        test, calibration = record["test"], record["calibration"]
        lines.append(f"| `{record['name']}` | {record['dataset']} | {record['n_train_cells']} / "
                     f"{record['n_validation_cells']} / {record['n_test_cells']} | {test['accuracy']:.3f} | "
                     f"{test['macro_f1']:.3f} | {calibration.get('test_ece_before', float('nan')):.3f} / "
                     f"{calibration.get('test_ece_after', float('nan')):.3f} "
                     f"({calibration.get('test_ece_floor', float('nan')):.3f}) | {record['train_seconds'] / 60:.1f} min "
                     f"({record['backbone_dtype']}) | {record['size_mb']:.1f} MB |")
    lines += ["", "Commands:", ""] + [f"    {record['command']}" for record in records.values()]
    (REPO / "docs/benchmarks/model_zoo.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--output_root", default="outputs/zoo", help="where train.py writes (relative to the repo)")
    parser.add_argument("--install_only", action="store_true",
                        help="copy already trained folders from --output_root into the package again, no training")
    args = parser.parse_args(argv)
    output_root = Path(args.output_root)
    record_file = REPO / "docs/benchmarks/model_zoo.json"
    records = json.loads(record_file.read_text())["models"] if record_file.is_file() else {}
    for name in args.models:
        record = records[name] if args.install_only else train(name, output_root)
        records[name] = install(name, REPO / output_root, record)
        write_records(records)


if __name__ == "__main__":
    main()
