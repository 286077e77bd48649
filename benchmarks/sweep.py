"""Runs many scInterpreter trainings from a bundle made by `benchmarks/pack_sweep_bundle.py`, several at a time
on one GPU (or on the CPU), and appends one JSON record per run: the screening tool for recipes and ablations.

    python benchmarks/sweep.py --bundle .sweep_bundle --plan levers --out sweep.jsonl --workers 6

The training loop is `train.py`'s recipe written out (AdamW, weight decay 0.01 off biases and norms, linear
warm-up over 5% of steps then cosine decay, gradient clipping at 1.0, shuffled batches), on the product's own
model classes; the cells are the product processor's top-k genes of the shared datasets and fixed splits. The
numbers screen recipes; `train.py` on this machine gives the figures we report for the product.
"""

import argparse
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BASE = {"n_top_genes": 128, "layers": 6, "lr": 2e-3, "epochs": 6, "batch_size": 16, "seed": 0, "table": "wordllama",
        "head_norm": False, "soft_token_rms": None, "gene_offsets": False, "cell_pooling": "class_token"}
LEVERS = {
    "base": {}, "rms": {"soft_token_rms": 0.14}, "ep12": {"epochs": 12}, "head_norm": {"head_norm": True},
    "offsets": {"gene_offsets": True}, "lr1e-3": {"lr": 1e-3}, "k64": {"n_top_genes": 64}, "L15": {"layers": 15},
    "rms+ep12": {"soft_token_rms": 0.14, "epochs": 12}, "rms+head_norm": {"soft_token_rms": 0.14, "head_norm": True},
    "rms+offsets": {"soft_token_rms": 0.14, "gene_offsets": True}, "offsets+ep12": {"gene_offsets": True, "epochs": 12},
    "rms+ep12+head_norm": {"soft_token_rms": 0.14, "epochs": 12, "head_norm": True},
}
ABLATIONS = {
    "random_genes": {"table": "random"}, "shuffled_genes": {"table": "shuffled"},
    "no_llm": {"cell_pooling": "mean"}, "L15": {"layers": 15}, "k32": {"n_top_genes": 32}, "k64": {"n_top_genes": 64},
    "L30": {"layers": 30},  # CPU only: layers past the bundle's 15 come from the product's cached backbone
}
DEFAULT = {"soft_token_rms": 0.1356, "n_top_genes": 64, "epochs": 12}  # train.py's recipe (RMS as `auto` gives)
ALL_SPLITS = [
    ("baron_human_pancreas", "fixed"), ("baron_mouse_pancreas", "fixed"), ("pbmc4k_soupx", "fixed"),
    ("mouse_immune_actinn", "fixed"), ("pbmc3k_clustifyr", "fixed"), ("pbmc_3batch_symphony", "fixed"),
    ("pbmc68k_reduced_scanpy", "fixed"), ("pbmc_3batch_symphony", "lobo_3pv1"),
    ("pbmc_3batch_symphony", "lobo_3pv2"), ("pbmc_3batch_symphony", "lobo_5p"),
]
ABLATION_SPLITS = [s for s in ALL_SPLITS if s[0] in ("baron_human_pancreas", "pbmc3k_clustifyr") or "lobo" in s[1]]


def make_plan(name: str, seeds=(0, 1, 2)):
    """Jobs in priority order: `levers` (Baron, 3 seeds), then `splits` (every split), then `ablations`."""
    jobs = []
    if name in ("levers", "all"):
        for (lever, change), seed in itertools.product(LEVERS.items(), seeds):
            jobs.append({"dataset": "baron_human_pancreas", "split": "fixed", "name": lever, **BASE, **change,
                         "seed": seed})
    if name == "followup":  # the paper-setting candidates for the default, more seeds
        followup = [("ep12", (3, 4)), ("rms+ep12", (3, 4)), ("k64+ep12", (0, 1, 2, 3)), ("rms+k64+ep12", (0, 1, 2)),
                    ("ep12+lr3e-3", (0, 1, 2))]
        extra = {"k64+ep12": {"n_top_genes": 64, "epochs": 12},
                 "rms+k64+ep12": {"soft_token_rms": 0.14, "n_top_genes": 64, "epochs": 12},
                 "ep12+lr3e-3": {"epochs": 12, "lr": 3e-3}}
        for lever, lever_seeds in followup:
            for seed in lever_seeds:
                jobs.append({"dataset": "baron_human_pancreas", "split": "fixed", "name": lever, **BASE,
                             **{**LEVERS, **extra}[lever], "seed": seed})
    if name == "default_splits":  # train.py's default recipe (RMS as `auto` gives for SmolLM2), smallest first
        order = ["pbmc68k_reduced_scanpy", "pbmc_3batch_symphony", "mouse_immune_actinn", "baron_mouse_pancreas",
                 "pbmc4k_soupx", "pbmc3k_clustifyr", "baron_human_pancreas"]
        for dataset, split in sorted(ALL_SPLITS, key=lambda s: order.index(s[0])):
            jobs.append({"dataset": dataset, "split": split, "name": "default", **BASE, **DEFAULT})
    if name == "exclude":  # the default recipe without ribosomal / mitochondrial genes among the top genes
        for (dataset, split), seed in [(("baron_human_pancreas", "fixed"), 0), (("baron_human_pancreas", "fixed"), 1),
                                       (("pbmc4k_soupx", "fixed"), 0), (("baron_mouse_pancreas", "fixed"), 0),
                                       (("baron_human_pancreas", "fixed"), 2)]:
            jobs.append({"dataset": dataset, "split": split, "name": "default+exclude_ribo_mito", **BASE, **DEFAULT,
                         "exclude_genes": "ribosomal_mitochondrial", "seed": seed})
    if name == "levers3":  # the levers not measured before, one at a time, on the default recipe
        for change in ({"projector_layers": 3}, {"projector_layers": 1}):
            jobs.append({"dataset": "baron_human_pancreas", "split": "fixed", **BASE, **DEFAULT, **change,
                         "name": "default+" + "+".join(f"{k}={v}" for k, v in change.items())})
    if name == "raw_table":  # with a bundle packed --no-center_gene_table
        jobs.append({"dataset": "baron_human_pancreas", "split": "fixed", **BASE, **DEFAULT,
                     "center_gene_table": False, "name": "default+raw_gene_table"})
    if name in ("splits", "all"):
        for (dataset, split), lever in itertools.product(ALL_SPLITS, ("base", "rms", "ep12", "offsets", "rms+ep12")):
            jobs.append({"dataset": dataset, "split": split, "name": lever, **BASE, **LEVERS[lever]})
    if name in ("ablations", "all"):
        for (dataset, split), (ablation, change) in itertools.product(ABLATION_SPLITS, ABLATIONS.items()):
            jobs.append({"dataset": dataset, "split": split, "name": ablation, **BASE, **change})
    seen, unique = set(), []
    for job in jobs:
        key = json.dumps({k: v for k, v in job.items() if k != "name"}, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(job)
    return unique


def _load_bundle(bundle: Path):
    from safetensors.numpy import load_file, safe_open

    with safe_open(bundle / "gene_tables.safetensors", framework="np") as handle:
        vocab_size = int(handle.metadata()["vocab_size"])
    tables = load_file(bundle / "gene_tables.safetensors")
    return tables, vocab_size


def gene_table(bundle: Path, name: str) -> np.ndarray:
    """The bundle's gene rows embedded by `name`: wordllama, random (as genes.py makes it) or shuffled."""
    tables, vocab_size = _load_bundle(bundle)
    wordllama = tables["wordllama"]
    if name == "wordllama":
        return wordllama
    if name == "random":
        full = np.random.default_rng(0).standard_normal((vocab_size, wordllama.shape[1])).astype(np.float32)
        full -= full.mean(0, keepdims=True)
        full /= np.maximum(np.linalg.norm(full, axis=1, keepdims=True), 1e-8)
        return full[tables["vocab_rows"]]
    if name == "shuffled":  # real description vectors given to the wrong genes (among the genes the cells use)
        return wordllama[np.random.default_rng(0).permutation(len(wordllama))]
    raise ValueError(name)


def dequantize_q4_1(raw: np.ndarray) -> np.ndarray:
    """GGML Q4_1 rows (blocks of 32 weights: float16 scale d, float16 minimum m, 16 bytes of 4-bit codes q) to
    float32 `d * q + m`, the low nibbles being the block's first 16 weights."""
    blocks = raw.reshape(-1, 20)
    scale = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    minimum = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    codes = blocks[:, 4:]
    q = np.concatenate([codes & 0x0F, codes >> 4], axis=1).astype(np.float32)
    return (scale * q + minimum).reshape(raw.shape[0], -1)


def deep_projector(dims):
    """A projector of any depth (Linear, GELU, ..., Linear through `dims`), initialised as the product's is: the
    projector-depth lever, measured here only (the product's projector has two layers)."""
    import torch

    class DeepProjector(torch.nn.Module):
        def __init__(self):
            super().__init__()
            modules = []
            for i in range(len(dims) - 1):
                linear = torch.nn.Linear(dims[i], dims[i + 1])
                torch.nn.init.normal_(linear.weight, std=0.02)
                torch.nn.init.zeros_(linear.bias)
                modules += [linear] + ([torch.nn.GELU()] if i < len(dims) - 2 else [])
            self.layers = torch.nn.Sequential(*modules)
            self.linear_1 = modules[0]  # get_gene_features reads the projector's dtype from linear_1

        def forward(self, weighted_gene_embeddings):
            return self.layers(weighted_gene_embeddings)

    return DeepProjector()


def build_model(bundle: Path, job: dict, classes, device):
    import torch
    from safetensors import safe_open

    from configuration_scinterpreter import ScInterpreterConfig
    from modeling_scinterpreter import ScInterpreterForCellAnnotation

    with safe_open(bundle / "backbone.safetensors", framework="np") as handle:
        metadata = handle.metadata()
        text_config = json.loads(metadata["config"])
        types = json.loads(metadata["types"])
        packed = {name: handle.get_tensor(name) for name in handle.keys()}
    text_config["num_hidden_layers"] = job["layers"]
    instruction_ids = json.loads((bundle / "instruction.json").read_text())["instruction_token_ids"]
    table = gene_table(bundle, job["table"])
    config = ScInterpreterConfig(
        text_config=text_config, gene_vocab_size=len(table), gene_embedding_dim=table.shape[1],
        n_top_genes=job["n_top_genes"], instruction_token_ids=instruction_ids, head_norm=job["head_norm"],
        soft_token_rms=job["soft_token_rms"], gene_offsets=job["gene_offsets"], cell_pooling=job["cell_pooling"],
        id2label=dict(enumerate(classes)), label2id={c: i for i, c in enumerate(classes)},
    )
    torch.manual_seed(job["seed"])
    model = ScInterpreterForCellAnnotation(config)
    if job.get("projector_layers", 2) != 2:
        n = job["projector_layers"]
        model.model.projector = deep_projector(
            [table.shape[1]] + [config.projector_hidden_size] * (n - 1) + [text_config["hidden_size"]])
    state = {}
    for name, data in packed.items():
        if name.startswith("layers.") and int(name.split(".")[1]) >= job["layers"]:
            continue
        if types.get(name, "F32") == "Q4_1":
            data = dequantize_q4_1(data)
        if name != "instruction_embeddings":
            state[name] = torch.from_numpy(np.asarray(data, dtype=np.float32))
    bundle_layers = {int(name.split(".")[1]) for name in packed if name.startswith("layers.")}
    if job["layers"] > len(bundle_layers):
        from safetensors.torch import load_file

        from scinterpreter.backbone import resolve_backbone

        folder = Path(resolve_backbone())
        cached = {}
        for file in sorted(folder.glob("*.safetensors")):
            cached.update(load_file(file))
        for name, tensor in cached.items():
            name = name.removeprefix("model.")
            if name.startswith("layers.") and len(bundle_layers) <= int(name.split(".")[1]) < job["layers"]:
                state[name] = tensor.float()
    language_model = model.model.language_model
    embed = torch.zeros_like(language_model.embed_tokens.weight)
    embed[instruction_ids] = torch.from_numpy(packed["instruction_embeddings"])
    state["embed_tokens.weight"] = embed
    missing, unexpected = language_model.load_state_dict(state, strict=False)
    assert not unexpected and not [m for m in missing if "rotary" not in m], (missing, unexpected)
    model.model.gene_embeddings.copy_(torch.from_numpy(table))
    model.set_backbone_dtype(torch.bfloat16).freeze_backbone()
    return model.to(device)


def run_job(bundle: Path, job: dict, device: str) -> dict:
    import torch
    from safetensors.numpy import load_file, safe_open
    from sklearn.metrics import f1_score

    with safe_open(bundle / f"{job['dataset']}.safetensors", framework="np") as handle:
        classes = json.loads(handle.metadata()["classes"])
    data = load_file(bundle / f"{job['dataset']}.safetensors")
    k = job["n_top_genes"]
    with safe_open(bundle / "gene_tables.safetensors", framework="np") as handle:
        packed_with = {"exclude_genes": handle.metadata().get("exclude_genes") or None,
                       "center_gene_table": handle.metadata().get("centered", "true") == "true"}
    wanted = {"exclude_genes": job.get("exclude_genes"), "center_gene_table": job.get("center_gene_table", True)}
    if wanted != packed_with:
        raise ValueError(f"the job wants {wanted}, {bundle} was packed with {packed_with}: see pack_sweep_bundle.py")
    gene_ids = torch.from_numpy(data["gene_ids"][:, :k].astype(np.int64))
    gene_values = torch.from_numpy(data["gene_values"][:, :k].astype(np.float32))
    gene_mask = torch.from_numpy(data["gene_mask"][:, :k].astype(np.int64))
    labels = torch.from_numpy(data["labels"].astype(np.int64))
    train, test = data[f"{job['split']}.train"].astype(np.int64), data[f"{job['split']}.test"].astype(np.int64)
    # Label ids over the training classes (a fold may miss a rare type); unseen test types count as errors.
    train_classes = sorted(set(labels[train].tolist()))
    remap = torch.full((len(classes),), -1, dtype=torch.long)
    remap[train_classes] = torch.arange(len(train_classes))
    model = build_model(bundle, job, [classes[i] for i in train_classes], device)

    decay = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith("bias") and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and (n.endswith("bias") or "norm" in n)]
    trainable = decay + no_decay
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=job["lr"])
    steps_per_epoch = math.ceil(len(train) / job["batch_size"])
    total = steps_per_epoch * job["epochs"]
    warmup = math.ceil(0.05 * total)
    # transformers' get_cosine_schedule_with_warmup, written out: importing transformers.optimization pulls in
    # trainer_utils, which imports peft where it is installed.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: step / max(1, warmup) if step < warmup
                                                  else max(0.0, 0.5 * (1 + math.cos(math.pi * (step - warmup)
                                                                                    / max(1, total - warmup)))))
    generator = torch.Generator().manual_seed(job["seed"])
    started, losses = time.perf_counter(), []
    model.train()
    for _ in range(job["epochs"]):
        order = train[torch.randperm(len(train), generator=generator).numpy()]
        for start in range(0, len(order), job["batch_size"]):
            rows = torch.from_numpy(order[start:start + job["batch_size"]])
            loss = model(gene_ids[rows].to(device), gene_values[rows].to(device), gene_mask[rows].to(device),
                         labels=remap[labels[rows]].to(device)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
    fit_seconds = time.perf_counter() - started

    model.eval()
    started, predicted = time.perf_counter(), []
    with torch.inference_mode():
        for start in range(0, len(test), 256):
            rows = torch.from_numpy(test[start:start + 256])
            logits = model(gene_ids[rows].to(device), gene_values[rows].to(device), gene_mask[rows].to(device)).logits
            predicted.append(torch.tensor(train_classes)[logits.argmax(-1).cpu()])
    predict_seconds = time.perf_counter() - started
    predicted = torch.cat(predicted).numpy()
    reference = labels[test].numpy()
    per_class = f1_score(reference, predicted, average=None, labels=list(range(len(classes))), zero_division=0)
    return {
        **job,
        "accuracy": round(float((predicted == reference).mean()), 4),
        "macro_f1": round(float(f1_score(reference, predicted, average="macro", zero_division=0)), 4),
        "per_class_f1": {c: round(float(f), 3) for c, f in zip(classes, per_class)},
        "final_loss": round(float(np.mean(losses[-20:])), 4),
        "fit_seconds": round(fit_seconds, 1),
        "predict_seconds": round(predict_seconds, 2),
        "n_train": int(len(train)), "n_test": int(len(test)),
    }


def _worker(bundle, jobs, device, out, lock, threads):
    import torch

    torch.set_num_threads(threads)
    while True:
        with lock:
            if not jobs:
                return
            job = jobs.pop(0)
        try:
            record = run_job(Path(bundle), job, device)
        except Exception as error:  # one failed configuration must not stop the sweep
            record = {**job, "error": f"{type(error).__name__}: {error}"}
        with lock:
            with open(out, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            print(json.dumps({k: record.get(k) for k in ("dataset", "split", "name", "seed", "accuracy", "macro_f1",
                                                          "final_loss", "fit_seconds", "error")}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=".sweep_bundle")
    parser.add_argument("--plan", default="all", choices=["levers", "splits", "ablations", "followup", "default_splits", "exclude", "levers3",
                                                      "raw_table", "all"])
    parser.add_argument("--out", default="sweep.jsonl")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default=None)
    parser.add_argument("--limit", type=int, default=None, help="Run only the first N jobs of the plan.")
    parser.add_argument("--skip", nargs="*", default=[], help="Datasets to leave out.")
    parser.add_argument("--names", nargs="*", default=None, help="Run only the plan's jobs of these names.")
    parser.add_argument("--splits", nargs="*", default=None, help="Run only these splits (fixed, lobo_3pv1, ...).")
    parser.add_argument("--override", default="{}", help="JSON merged into every job (e.g. for a smoke test).")
    args = parser.parse_args()
    import multiprocessing as mp

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    override = json.loads(args.override)
    jobs = [{**job, **override} for job in make_plan(args.plan) if job["dataset"] not in args.skip
            and (args.names is None or job["name"] in args.names)
            and (args.splits is None or job["split"] in args.splits)][: args.limit]
    print(f"{len(jobs)} jobs on {device} with {args.workers} workers", flush=True)
    context = mp.get_context("spawn")
    manager = context.Manager()
    shared_jobs, lock = manager.list(jobs), manager.Lock()
    threads = max(1, (os.cpu_count() or 2) // args.workers)
    workers = [context.Process(target=_worker, args=(args.bundle, shared_jobs, device, args.out, lock, threads))
               for _ in range(args.workers)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


if __name__ == "__main__":
    main()
