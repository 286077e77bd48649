"""Annotation metrics through `evaluate`, with a local metric module (the Hub's scripts need a download)."""

from pathlib import Path

import numpy as np

from .optional import require

METRIC_PATH = Path(__file__).resolve().parent / "metrics" / "cell_annotation"
_METRIC = None


def annotation_metrics(predictions, references) -> dict:
    """Accuracy and macro precision, recall and F1 of predicted label ids."""
    global _METRIC
    if _METRIC is None:
        require("train", "annotation_metrics", "evaluate", "datasets", "sklearn")
        import evaluate

        _METRIC = evaluate.load(str(METRIC_PATH))
    result = _METRIC.compute(predictions=np.asarray(predictions), references=np.asarray(references))
    return {name: round(float(value), 4) for name, value in result.items()}


def per_class_report(predictions, references, classes) -> dict:
    """Precision, recall, F1 and support per cell type."""
    require("train", "per_class_report", "sklearn")
    from sklearn.metrics import classification_report

    report = classification_report(
        references, predictions, labels=list(range(len(classes))), target_names=list(classes),
        output_dict=True, zero_division=0,
    )
    return {name: {k: round(float(v), 4) for k, v in values.items()} for name, values in report.items()
            if name in classes}
