"""Cell-annotation metrics for `evaluate`: accuracy and macro-averaged precision, recall and F1.

Loaded offline with ``evaluate.load(<this folder>)``; the Hub's own metric scripts need a download.
"""

import datasets
import evaluate
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

_DESCRIPTION = """Accuracy and macro-averaged precision, recall and F1 of predicted cell-type labels.
Macro averages weigh every cell type equally, so rare types count as much as common ones; only the labels
that occur in the references or the predictions are averaged over."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): predicted label ids.
    references (`list[int]`): true label ids.
Returns:
    accuracy, macro_precision, macro_recall, macro_f1 (`float`).
Examples:
    >>> metric = evaluate.load("scinterpreter/metrics/cell_annotation")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])["accuracy"]
    0.6666666666666666
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CellAnnotation(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        precision, recall, f1, _ = precision_recall_fscore_support(
            references, predictions, average="macro", zero_division=0
        )
        return {
            "accuracy": float(accuracy_score(references, predictions)),
            "macro_precision": float(precision),
            "macro_recall": float(recall),
            "macro_f1": float(f1),
        }
