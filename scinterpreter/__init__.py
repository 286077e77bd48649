"""scInterpreter: a frozen Llama reads a cell's top genes as soft tokens and names its cell type.

The model itself lives in the top-level Hub files (`configuration_scinterpreter.py`, `modeling_scinterpreter.py`,
`loading_scinterpreter.py`, `gene_matching_scinterpreter.py`, `features_scinterpreter.py`,
`processing_scinterpreter.py`, `pipeline_scinterpreter.py`; listed in `safety.REMOTE_CODE_FILES`); this package holds
what builds and trains it.
"""

from .backbone import DEFAULT_BACKBONE, load_backbone, resolve_backbone
from .build import build_model, register_auto_classes
from .genes import GeneTable, build_gene_table, load_gene_descriptions
from .recipe import Recipe

__all__ = [
    "DEFAULT_BACKBONE",
    "GeneTable",
    "Recipe",
    "build_gene_table",
    "build_model",
    "load_backbone",
    "load_gene_descriptions",
    "register_auto_classes",
    "resolve_backbone",
]
