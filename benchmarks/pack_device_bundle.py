"""Packs what `benchmarks/recipes.py --bundle` needs into one small folder, for a machine with no network, no
../shared and no single-cell stack (a lent GPU), and unpacks it there into scInterpreter's cache.

    python benchmarks/pack_device_bundle.py pack --out .device_bundle --layers 6      # here
    python benchmarks/pack_device_bundle.py unpack --bundle .device_bundle           # there, before recipes.py

The bundle holds: every shared dataset as a compressed sparse matrix (counts as integers, log-normalised values as
float32) with its labels and split positions; the product's gene table rows for the genes those datasets name (float16);
SmolLM2's first decoder layers in their original GGUF Q4_1 blocks (4.5 bits a weight, checked to dequantise
exactly to the product's bf16 weights), the instruction's token embeddings and the tokenizer. `unpack` writes the
gene table and a backbone folder into $SCINTERPRETER_CACHE, where the product's own loaders find them.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def dequantize_q4_1(raw: np.ndarray) -> np.ndarray:
    """GGML Q4_1 rows (blocks of 32 weights: float16 scale d, float16 minimum m, 16 bytes of 4-bit codes q) to
    float32 `d * q + m`, the low nibbles being the block's first 16 weights."""
    blocks = raw.reshape(-1, 20)
    scale = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    minimum = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    codes = blocks[:, 4:]
    q = np.concatenate([codes & 0x0F, codes >> 4], axis=1).astype(np.float32)
    return (scale * q + minimum).reshape(raw.shape[0], -1)


def reverse_permutation(n_rows: int, n_head: int) -> np.ndarray:
    """Row order that undoes llama.cpp's q/k permutation (as transformers' GGUF loader does)."""
    rows = np.arange(n_rows).reshape(n_head, n_rows // n_head // 2, 2)
    return rows.swapaxes(1, 2).reshape(-1)


def pack_data(out: Path):
    from splits import DATASETS, load_split, splits

    (out / "data").mkdir(parents=True, exist_ok=True)
    for name in DATASETS:
        arrays = {}
        for dataset, split, split_file, fold in splits([name]):
            if dataset != name:
                continue
            adata, labels, train, test = load_split(dataset, split_file, fold)
            arrays[f"{split}.train"], arrays[f"{split}.test"] = train.astype(np.int32), test.astype(np.int32)
        matrix = adata.X.tocsr()
        matrix.sort_indices()
        integers = bool(np.all(matrix.data == np.round(matrix.data))) and matrix.data.max() < 2**16
        steps = np.diff(matrix.indices.astype(np.int64), prepend=0)
        steps[matrix.indptr[:-1][np.diff(matrix.indptr) > 0]] = matrix.indices[matrix.indptr[:-1][np.diff(matrix.indptr) > 0]]
        np.savez_compressed(
            out / "data" / f"{name}.npz", values=matrix.data.astype(np.uint16 if integers else np.float32),
            index_steps=steps.astype(np.uint16), indptr=matrix.indptr.astype(np.int64),
            gene_names=np.asarray(adata.var_names, dtype=str), labels=np.asarray(labels, dtype=str), **arrays,
        )
        print(f"{name}: {matrix.shape}, {(out / 'data' / f'{name}.npz').stat().st_size / 1e6:.1f} MB")


def pack_gene_table(out: Path):
    from safetensors.numpy import save_file

    from scinterpreter.build import build_processor
    from scinterpreter.genes import build_gene_table
    from splits import DATASETS, SHARED

    import anndata

    table = build_gene_table()
    processor = build_processor(table)
    rows = set()
    for name in DATASETS:
        names = anndata.read_h5ad(SHARED / f"{name}.h5ad", backed="r").var_names
        rows.update(processor.matcher.match(names).vocab_ids.tolist())
    rows = np.array(sorted(rows), dtype=np.int32)
    # float16 keeps the bundle under the device's 64 MiB (a relative error of ~5e-4 per value, for screening).
    save_file({"rows": rows, "embeddings": np.ascontiguousarray(table.embeddings[rows].astype(np.float16))},
              out / "gene_table.safetensors",
              metadata={"hash": table.content_hash, "vocab_size": str(len(table.vocab))})
    print(f"gene table: {len(rows)} of {len(table.vocab)} genes, {(out / 'gene_table.safetensors').stat().st_size / 1e6:.1f} MB")
    return table.content_hash


def pack_backbone(out: Path, n_layers: int):
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import save_file

    from configuration_scinterpreter import DEFAULT_INSTRUCTION
    from scinterpreter.backbone import SMOLLM2_GGUF, load_backbone, resolve_backbone, smollm2_gguf_dir
    from scinterpreter.build import token_embedding_rms

    reader = GGUFReader(str(smollm2_gguf_dir() / SMOLLM2_GGUF))
    raw = {t.name: t for t in reader.tensors}
    reference, tokenizer = load_backbone(num_layers=n_layers, dtype=torch.bfloat16)
    config = reference.config
    tensors, types = {}, {}
    for i in range(n_layers):
        for hf_name, gguf_name in GGUF_NAMES.items():
            tensor = raw[f"blk.{i}.{gguf_name}.weight"]
            data = np.asarray(tensor.data)
            if gguf_name in ("attn_q", "attn_k"):
                heads = config.num_attention_heads if gguf_name == "attn_q" else config.num_key_value_heads
                data = data[reverse_permutation(data.shape[0], heads)]
            name = f"layers.{i}.{hf_name}.weight"
            tensors[name], types[name] = np.ascontiguousarray(data), tensor.tensor_type.name
            values = dequantize(data, tensor.tensor_type) if data.dtype == np.uint8 else data
            if types[name] == "Q4_1":
                assert np.array_equal(dequantize_q4_1(data), values), name
            else:
                assert types[name] == "F32", (name, types[name])
            # The packed blocks must give back the product's weights exactly.
            expected = reference.state_dict()[name].float().numpy()
            got = torch.from_numpy(np.asarray(values, dtype=np.float32)).to(torch.bfloat16).float().numpy()
            assert np.array_equal(got.reshape(expected.shape), expected), name
    tensors["norm.weight"] = reference.norm.weight.detach().float().numpy()
    instruction_ids = tokenizer(DEFAULT_INSTRUCTION)["input_ids"]
    embed = reference.embed_tokens.weight.detach()
    tensors["instruction_ids"] = np.asarray(instruction_ids, dtype=np.int64)
    tensors["instruction_embeddings"] = embed[instruction_ids].float().numpy()
    save_file(tensors, str(out / "backbone.safetensors"), metadata={"types": json.dumps(types)})
    folder = out / "backbone_files"
    folder.mkdir(exist_ok=True)
    config_dict = config.to_dict()
    config_dict["num_hidden_layers"] = n_layers
    config_dict.pop("layer_types", None)
    (folder / "config.json").write_text(json.dumps(config_dict, indent=1))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (Path(resolve_backbone()) / name).exists():
            shutil.copy(Path(resolve_backbone()) / name, folder / name)
    # build_model's `soft_token_rms="auto"` for this backbone, whose embedding table the bundle leaves out.
    rms = token_embedding_rms(embed)
    print(f"backbone: {n_layers} layers, {(out / 'backbone.safetensors').stat().st_size / 1e6:.1f} MB, token RMS {rms}")
    return rms


def unpack(bundle: Path):
    """Writes the bundle's gene table and backbone into $SCINTERPRETER_CACHE for the product's loaders."""
    import torch
    from safetensors.numpy import load_file
    from safetensors.torch import save_file as save_torch

    from loading_scinterpreter import cache_dir, converted_backbone_dir, gene_table_path, write_gene_table
    from scinterpreter.genes import load_gene_descriptions

    meta = json.loads((bundle / "bundle.json").read_text())
    packed = load_file(bundle / "gene_table.safetensors")
    vocab = list(load_gene_descriptions()["symbol"])
    embeddings = np.zeros((len(vocab), packed["embeddings"].shape[1]), dtype=np.float32)
    embeddings[packed["rows"]] = packed["embeddings"].astype(np.float32)
    write_gene_table(gene_table_path(meta["gene_table_hash"]), embeddings, vocab)

    from safetensors import safe_open

    with safe_open(bundle / "backbone.safetensors", framework="np") as handle:
        types = json.loads(handle.metadata()["types"])
    backbone = load_file(bundle / "backbone.safetensors")
    config = json.loads((bundle / "backbone_files" / "config.json").read_text())
    weights = {}
    for name, kind in types.items():
        values = dequantize_q4_1(backbone[name]) if kind == "Q4_1" else backbone[name]
        weights[f"model.{name}"] = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(torch.bfloat16)
    weights["model.norm.weight"] = torch.from_numpy(backbone["norm.weight"]).to(torch.bfloat16)
    embed = torch.zeros(config["vocab_size"], config["hidden_size"], dtype=torch.bfloat16)
    embed[torch.from_numpy(backbone["instruction_ids"])] = torch.from_numpy(backbone["instruction_embeddings"]).to(torch.bfloat16)
    weights["model.embed_tokens.weight"] = embed
    folder = Path(converted_backbone_dir())  # where resolve_backbone finds the default SmolLM2
    folder.mkdir(parents=True, exist_ok=True)
    for item in (bundle / "backbone_files").iterdir():
        shutil.copy(item, folder / item.name)
    save_torch({k: v.contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"),
               metadata={"format": "pt"})
    print(f"unpacked into {cache_dir()}: gene table {meta['gene_table_hash']}, {config['num_hidden_layers']} layers")


def main():
    from scinterpreter.recipe import Recipe

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["pack", "unpack"])
    parser.add_argument("--out", "--bundle", dest="bundle", default=".device_bundle")
    parser.add_argument("--layers", type=int, default=Recipe().num_backbone_layers)
    args = parser.parse_args()
    bundle = Path(args.bundle)
    if args.command == "unpack":
        return unpack(bundle)
    bundle.mkdir(parents=True, exist_ok=True)
    pack_data(bundle)
    table_hash = pack_gene_table(bundle)
    rms = pack_backbone(bundle, args.layers)
    (bundle / "bundle.json").write_text(json.dumps({"gene_table_hash": table_hash, "soft_token_rms": str(rms),
                                                    "layers": args.layers}))
    total = sum(path.stat().st_size for path in bundle.rglob("*") if path.is_file())
    print(f"bundle: {total / 2**20:.1f} MiB in {bundle}")


if __name__ == "__main__":
    main()
