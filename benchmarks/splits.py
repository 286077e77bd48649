"""The shared datasets and their fixed splits (../shared/data/scrna), as every benchmark reads them, and the two
helpers every benchmark scores with: `predict` (a model's outputs, batch by batch) and `score` (accuracy, macro-F1)."""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scinterpreter.data import check_label_column, read_h5ad, split_cells  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "scrna"
DATASETS = ["baron_human_pancreas", "baron_mouse_pancreas", "mouse_immune_actinn", "pbmc3k_clustifyr",
            "pbmc4k_soupx", "pbmc68k_reduced_scanpy", "pbmc_3batch_symphony"]
LOBO_FOLDS = ["3pv1", "3pv2", "5p"]


def splits(names=None):
    """(dataset, split, split file, fold): the 7 fixed splits and the 3 leave-one-batch-out folds of PBMC 3-batch.
    `names` keeps the splits whose dataset or split name (e.g. `lobo_3pv1`) is listed."""
    every = [(name, "fixed", SHARED / "splits" / f"{name}.json", None) for name in DATASETS]
    every += [("pbmc_3batch_symphony", f"lobo_{fold}", SHARED / "splits" / "pbmc_3batch_symphony.lobo.json", fold)
              for fold in LOBO_FOLDS]
    return [s for s in every if not names or s[0] in names or s[1] in names]


def load_split(dataset, split_file, fold=None):
    """`(adata, labels, train, test)`: the dataset, its labels as strings and the train / test cell positions."""
    adata = read_h5ad(SHARED / f"{dataset}.h5ad")
    label_key = json.loads(Path(split_file).read_text()).get("label_key", "cell_type")
    labels = check_label_column(adata, label_key)
    train, test = split_cells(adata, labels, split_file, fold)
    return adata, labels, train, test


def predict(model, inputs, batch_size=64):
    """`(logits, cell_embeddings)` of a model on processor `inputs` (`gene_ids`, `gene_values`, `gene_mask` tensors,
    and the `linear_gene_*` ones where the processor gives them),
    `batch_size` cells at a time on the model's device, in eval mode; both float32 on the CPU. Predicted label ids:
    `predict(...)[0].argmax(-1)`."""
    import torch

    model.eval()
    logits, embeddings = [], []
    with torch.inference_mode():
        for start in range(0, len(inputs["gene_ids"]), batch_size):
            outputs = model(**{k: v[start:start + batch_size].to(model.device) for k, v in inputs.items()})
            logits.append(outputs.logits.float().cpu())
            embeddings.append(outputs.cell_embeddings.float().cpu())
    return torch.cat(logits), torch.cat(embeddings)


def best_logistic_regression(records) -> dict:
    """`{(dataset, split): macro-F1}` of the better logistic regression (L1 or L2) among result `records` (dicts with
    `method`, `dataset`, `split`, `macro_f1`, as in docs/benchmarks/results.json)."""
    best = {}
    for record in records:
        if record["method"].startswith("logistic regression"):
            key = (record["dataset"], record["split"])
            best[key] = max(best.get(key, 0.0), record["macro_f1"])
    return best


def score(references, predicted, labels=None) -> dict:
    """`{"accuracy", "macro_f1"}` of `predicted` against `references` (labels or label ids), rounded to 4 places.
    Macro-F1 averages over `labels` when given (e.g. only the types both sides of a transfer know), else over the
    classes present in either; a class never predicted and never present counts 0."""
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": round(float(accuracy_score(references, predicted)), 4),
            "macro_f1": round(float(f1_score(references, predicted, average="macro", labels=labels,
                                             zero_division=0)), 4)}
