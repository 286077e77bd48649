"""Builds a fresh scInterpreter model and processor from a backbone, a gene table and a label set."""

import logging
import shutil
from pathlib import Path

import torch

from configuration_scinterpreter import DEFAULT_INSTRUCTION, ScInterpreterConfig
from loading_scinterpreter import backbone_fingerprint, select_backbone_dtype
from modeling_scinterpreter import ScInterpreterForCellAnnotation
from processing_scinterpreter import ScInterpreterProcessor

from .backbone import DEFAULT_BACKBONE, load_backbone
from .genes import GeneTable, build_gene_table, load_gene_id_maps
from .safety import REMOTE_CODE_FILES

logger = logging.getLogger(__name__)

PIPELINE_TASK = "cell-annotation"
CODE_DIR = Path(__file__).resolve().parent.parent
PIPELINE_FILE = CODE_DIR / "pipeline_scinterpreter.py"


def register_auto_classes(config: ScInterpreterConfig):
    """Makes `save_pretrained` copy the code files and write `auto_map`, so folders load with trust_remote_code."""
    ScInterpreterConfig.register_for_auto_class()
    ScInterpreterForCellAnnotation.register_for_auto_class("AutoModel")
    ScInterpreterProcessor.register_for_auto_class("AutoProcessor")
    config.custom_pipelines = {
        PIPELINE_TASK: {"impl": "pipeline_scinterpreter.CellAnnotationPipeline", "pt": ["AutoModel"], "type": "multimodal"}
    }


def save_model_folder(model, processor, folder, state_dict=None, adapter_only=False):
    """
    Writes a Hub model folder: weights (safetensors), config with `auto_map` and `custom_pipelines`, processor,
    and the code files, the `cell-annotation` pipeline's included. With `adapter_only`, only the trained weights
    (the backbone and gene table are loaded again from where the config says).
    """
    folder = Path(folder)
    register_auto_classes(model.config)
    if adapter_only:
        model.save_pretrained(folder, adapter_only=True)
    else:
        model.save_pretrained(folder, state_dict=state_dict)
    if processor is not None:
        processor.save_pretrained(folder)
    shutil.copy(PIPELINE_FILE, folder / PIPELINE_FILE.name)
    # `save_pretrained` copies the model's and the processor's code files and what they import; what is still
    # missing (the processor's file when no processor is saved) comes from here, so every folder holds all of them.
    for name in REMOTE_CODE_FILES:
        if not (folder / name).is_file():
            shutil.copy(CODE_DIR / name, folder / name)
    return folder


def build_model(
    labels,
    backbone: str = DEFAULT_BACKBONE,
    num_backbone_layers: int | None = None,
    gene_table: GeneTable | None = None,
    n_top_genes: int = 64,
    instruction: str = DEFAULT_INSTRUCTION,
    backbone_dtype: torch.dtype | None = None,
    processor_kwargs: dict | None = None,
    soft_token_rms: float | str | None = None,
    **config_kwargs,
):
    """
    A new, untrained `ScInterpreterForCellAnnotation` and its `ScInterpreterProcessor`.

    Args:
        labels (`list[str]`): the cell types, in label-id order.
        backbone (`str`): any Llama-architecture checkpoint, by Hub id or path (default: SmolLM2-135M-Instruct).
        num_backbone_layers (`int`, *optional*): keep only the first N decoder layers (default: all).
        gene_table (`GeneTable`, *optional*): gene vocabulary and embeddings (default: built-in human table,
            wordllama, centred).
        backbone_dtype (`torch.dtype`, *optional*): dtype of the frozen backbone (default: fastest on this CPU).
        soft_token_rms (`float` or `"auto"`, *optional*): rescale every soft token to this RMS; `"auto"` takes
            the RMS of the backbone's token embeddings; `None` or `"none"` leaves the projector's scale (the paper).
    """
    gene_table = gene_table or build_gene_table()
    backbone_dtype = backbone_dtype or select_backbone_dtype("cpu")
    language_model, tokenizer = load_backbone(backbone, num_backbone_layers, dtype=torch.float32)
    if soft_token_rms == "auto":
        soft_token_rms = round(float(language_model.embed_tokens.weight.detach().pow(2).mean().sqrt()), 4)
    elif soft_token_rms in (None, "none"):
        soft_token_rms = None
    else:
        soft_token_rms = float(soft_token_rms)
    config = ScInterpreterConfig(
        text_config=language_model.config.to_dict(),
        gene_vocab_size=len(gene_table.vocab),
        gene_embedding_dim=gene_table.dim,
        n_top_genes=n_top_genes,
        instruction=instruction,
        instruction_token_ids=tokenizer(instruction)["input_ids"],
        species=gene_table.species,
        gene_text_encoder=gene_table.encoder,
        gene_table_centered=gene_table.centered,
        gene_table_hash=gene_table.content_hash,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        backbone_name_or_path=backbone,
        soft_token_rms=soft_token_rms,
        scinterpreter_version=package_version(),
        backbone_fingerprint=backbone_fingerprint(language_model.state_dict()),
        **config_kwargs,
    )
    register_auto_classes(config)
    model = ScInterpreterForCellAnnotation(config)
    model.model.load_backbone_weights(language_model.state_dict())
    model.model.gene_embeddings.copy_(torch.from_numpy(gene_table.embeddings))
    model.set_backbone_dtype(backbone_dtype).freeze_backbone()
    processor = build_processor(gene_table, n_top_genes=n_top_genes, **(processor_kwargs or {}))
    return model, processor


def package_version() -> str:
    """The installed scinterpreter's version, recorded in every model config it builds."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scinterpreter")
    except PackageNotFoundError:
        return "unknown"


def build_processor(gene_table: GeneTable, **processor_kwargs) -> ScInterpreterProcessor:
    """An unfitted `ScInterpreterProcessor` for `gene_table`'s vocabulary, with its alias, ID and ortholog maps."""
    return ScInterpreterProcessor(
        gene_vocab=gene_table.vocab, species=gene_table.species, **load_gene_id_maps(gene_table.vocab),
        **processor_kwargs,
    )
