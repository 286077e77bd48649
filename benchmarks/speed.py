"""Speed of scInterpreter on this machine, against the matmul peak and against a naive fp32 forward pass.

    python benchmarks/speed.py [--seconds 20] [--rounds 3] [--out docs/benchmarks]
    python benchmarks/speed.py --render [docs/benchmarks/speed.json]   # only the markdown, from the JSON

Prints and writes (docs/benchmarks/speed.json and speed.md), from one run: the CPU model and flags; the bf16 and
fp32 matmul FLOP/s this machine reaches (a plain torch matmul loop); cells/s for inference and training at the
default settings (`Recipe()`: its layers, k and pooling) and at full depth (30 layers, the same k), inference both
with the backbone under `torch.compile` (as the pipeline runs large jobs) and without; the same inference through a
naive fp32 forward pass that reads the instruction again for every cell, as the paper's code does; and the fraction
of the best matmul peak that inference reaches, counting the model's FLOPs per cell, timed in rounds beside the peak.
The last printed line is one JSON object with the headline numbers. speed.md is rendered from speed.json alone.
"""

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from loading_scinterpreter import select_backbone_dtype  # noqa: E402
from pipeline_scinterpreter import COMPILE_MIN_CELLS  # noqa: E402
from scinterpreter.build import build_model  # noqa: E402
from scinterpreter.recipe import Recipe  # noqa: E402

MATMUL_SIZE = 2048  # the square matrices of the matmul peak


def cpu_description():
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"]
    return {"cpu": model, "threads": torch.get_num_threads(), "flags": [f for f in wanted if f in flags]}


def timed(function, seconds: float, min_calls: int = 3):
    """Calls `function` repeatedly for about `seconds` after one warm-up call; returns (calls, elapsed)."""
    function()
    calls, started = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - started < seconds:
        function()
        calls += 1
    return calls, time.perf_counter() - started


def matmul_peak(dtype, seconds, size=MATMUL_SIZE):
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    calls, elapsed = timed(lambda: torch.mm(a, b), seconds)
    return 2 * size**3 * calls / elapsed


def flops_per_cell(config, n_genes: int, n_prefix: int, training: bool = False) -> float:
    """Multiply-adds x 2 of the backbone for one cell's gene tokens and class token (prefix keys/values reused)."""
    text = config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    kv = text.num_key_value_heads * head_dim
    per_token = 2 * (text.hidden_size * (text.hidden_size * 2 + kv * 2) + 3 * text.hidden_size * text.intermediate_size)
    tokens = n_genes + 1
    context = sum(n_prefix + i + 1 for i in range(tokens))  # causal attention: token i sees the prefix and i + 1
    attention = 4 * text.num_attention_heads * head_dim * context
    backbone = text.num_hidden_layers * (tokens * per_token + attention)
    projector = tokens * 2 * (config.gene_embedding_dim * config.projector_hidden_size
                              + config.projector_hidden_size * text.hidden_size)
    total = backbone + projector
    return 3 * total if training else total


def random_cells(config, n_cells, seed=0):
    generator = torch.Generator().manual_seed(seed)
    gene_ids = torch.stack([torch.randperm(config.gene_vocab_size, generator=generator)[: config.n_top_genes]
                            for _ in range(n_cells)])
    gene_values = torch.sort(torch.rand(n_cells, config.n_top_genes, generator=generator) * 5, -1, descending=True)[0]
    return gene_ids, gene_values, torch.ones_like(gene_ids)


def naive_forward(model, gene_ids, gene_values):
    """The paper's way: fp32, the instruction embedded and read again with every cell's tokens."""
    base = model.model
    if model.config.cell_pooling == "mean":
        raise ValueError("the naive forward times the backbone, which cell_pooling='mean' skips")
    instruction = torch.tensor([model.config.instruction_token_ids] * len(gene_ids))
    embeds = torch.cat([base.language_model.embed_tokens(instruction), base.get_gene_features(gene_ids, gene_values),
                        base.class_token.expand(len(gene_ids), 1, -1)], 1)
    hidden = base.language_model(inputs_embeds=embeds.to(base.backbone_dtype)).last_hidden_state
    n_genes = torch.full((len(gene_ids),), gene_ids.shape[1])  # every cell has all its genes, then its class token
    logits = model.head(base.pool_cell_embeddings(hidden[:, instruction.shape[1]:], n_genes))
    if model.gene_score_weights is not None:
        logits = logits + model.linear_gene_scores(gene_ids, gene_values)
    return logits


def measure(layers, n_top_genes, seconds, peak_dtype, batch_sizes=(16, 64), train_batch_size=16, rounds=3):
    """
    Cells/s of one model size. Inference runs as a large job runs it (backbone under `torch.compile`, see
    `ScInterpreterModel.compile_backbone`) and uncompiled; both are timed in `rounds` rounds interleaved with the
    matmul peak, so that each fraction of the peak compares timings taken under the same load on a shared machine.
    """
    model, _ = build_model([f"type{i}" for i in range(10)], num_backbone_layers=layers, n_top_genes=n_top_genes)
    config = model.config
    n_prefix = len(config.instruction_token_ids)
    gene_ids, gene_values, gene_mask = random_cells(config, max(batch_sizes))
    flops = flops_per_cell(config, n_top_genes, n_prefix)
    result = {"layers": config.text_config.num_hidden_layers, "n_top_genes": n_top_genes,
              "backbone_dtype": str(model.model.backbone_dtype).replace("torch.", ""),
              "flops_per_cell": flops, "inference_by_batch_size": {}, "train_batch_size": train_batch_size,
              "naive_batch_size": len(gene_ids)}

    def inference_rate(size, seconds):
        inputs = (gene_ids[:size], gene_values[:size], gene_mask[:size])
        with torch.inference_mode():
            calls, elapsed = timed(lambda: model(*inputs), seconds)
        return calls * size / elapsed

    model.eval()
    for size in batch_sizes:
        result["inference_by_batch_size"][size] = inference_rate(size, seconds / 2)
    best = max(result["inference_by_batch_size"], key=result["inference_by_batch_size"].get)
    result["inference_batch_size"] = best

    started = time.perf_counter()
    model.model.compile_backbone()
    inference_rate(best, 0)
    result["compile_seconds"] = time.perf_counter() - started
    by_round = {"peak": [], "compiled": [], "eager": []}
    for _ in range(rounds):
        by_round["peak"].append(matmul_peak(peak_dtype, seconds / 4))
        by_round["compiled"].append(inference_rate(best, seconds / 2))
        model.model.compile_backbone(False)
        by_round["eager"].append(inference_rate(best, seconds / 2))
        model.model.compile_backbone()
    model.model.compile_backbone(False)
    result["rounds"] = by_round
    for name in ("compiled", "eager"):
        fractions = [flops * rate / peak for rate, peak in zip(by_round[name], by_round["peak"])]
        result[f"{name}_inference_cells_per_s"] = statistics.median(by_round[name])
        result[f"{name}_peak_fraction"] = statistics.median(fractions)
    result["inference_cells_per_s"] = result["compiled_inference_cells_per_s"]
    result["peak_fraction"] = result["compiled_peak_fraction"]

    model.train()
    labels = torch.zeros(train_batch_size, dtype=torch.long)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)

    def step():
        loss = model(gene_ids[:train_batch_size], gene_values[:train_batch_size], gene_mask[:train_batch_size],
                     labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    calls, elapsed = timed(step, seconds)
    result["training_cells_per_s"] = calls * train_batch_size / elapsed

    model.eval().set_backbone_dtype(torch.float32)
    with torch.no_grad():
        calls, elapsed = timed(lambda: naive_forward(model, gene_ids, gene_values), seconds)
    result["naive_fp32_cells_per_s"] = calls * len(gene_ids) / elapsed
    result["naive_flops_per_cell"] = flops_per_cell(config, n_top_genes + n_prefix, 0)
    result["speedup_over_naive_fp32"] = result["inference_cells_per_s"] / result["naive_fp32_cells_per_s"]
    result["eager_speedup_over_naive_fp32"] = result["eager_inference_cells_per_s"] / result["naive_fp32_cells_per_s"]
    return result


def spread(values) -> float:
    """(max - min) / median: how much a figure moved between the rounds of one run."""
    return (max(values) - min(values)) / statistics.median(values)


def render(report: dict) -> str:
    """The markdown report of a speed.json, every figure taken from it (what it lacks is said so)."""
    runs = report["runs"]
    command = report.get("command", "python benchmarks/speed.py")
    recorded = "" if "command" in report else " (command line not recorded)"
    n_rounds = {len(r["rounds"]["peak"]) for r in runs}
    peak_dtype = max(report["matmul_flops"], key=report["matmul_flops"].get)
    batch_sizes = sorted({int(size) for r in runs for size in r["inference_by_batch_size"]})

    def batch(key):
        sizes = sorted({r[key] for r in runs if key in r})
        return "batch " + " / ".join(map(str, sizes)) if sizes and all(key in r for r in runs) else \
            "a batch size not recorded"

    matmul = f"{report['matmul_size']} x {report['matmul_size']}" if "matmul_size" in report else \
        "matrix size not recorded"
    peak_spread = spread([p for r in runs for p in r["rounds"]["peak"]])
    rate_spread = max(spread(r["rounds"][name]) for r in runs for name in ("compiled", "eager"))
    lines = [
        "# Speed on this machine",
        "",
        f"`{command}`{recorded} on {report['date']}: {report['cpu']}, {report['threads']} threads, flags "
        f"{', '.join(report['flags'])}; backbone dtype chosen: {report['chosen_backbone_dtype']}. Random cells of k "
        f"genes; inference at the faster of batch {' and '.join(map(str, batch_sizes))}, training at "
        f"{batch('train_batch_size')}, naive fp32 at {batch('naive_batch_size')}.",
        "",
        f"Matmul peak ({matmul}, torch.mm loop): fp32 {report['matmul_flops']['float32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {report['matmul_flops']['bfloat16'] / 1e9:.0f} GFLOP/s. Inference is timed in "
        f"{' / '.join(map(str, sorted(n_rounds)))} rounds, each beside a new {peak_dtype} peak measurement; the table "
        "gives medians over the rounds and each fraction of the peak compares a round's inference with that round's "
        f"peak (between the rounds of this run the peak moved by {peak_spread:.0%} and an inference rate by up to "
        f"{rate_spread:.0%}: max - min over the median).",
        "",
        "Inference as the product runs a large job: the backbone under `torch.compile` (the pipeline's default from "
        f"{COMPILE_MIN_CELLS:,} cells, `compile_backbone=True` below that); uncompiled as it runs a small one.",
        "",
        "| layers | k | inference cells/s (compiled) | fraction of peak | uncompiled cells/s | fraction of peak "
        "| training cells/s | naive fp32 cells/s | speed-up (compiled / uncompiled) | GFLOP per cell |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['layers']} | {r['n_top_genes']} | {r['inference_cells_per_s']:.1f} | {r['peak_fraction']:.2f} | "
            f"{r['eager_inference_cells_per_s']:.1f} | {r['eager_peak_fraction']:.2f} | "
            f"{r['training_cells_per_s']:.1f} | {r['naive_fp32_cells_per_s']:.1f} | "
            f"{r['speedup_over_naive_fp32']:.2f}x / {r['eager_speedup_over_naive_fp32']:.2f}x | "
            f"{r['flops_per_cell'] / 1e9:.3f} |"
        )
    for r in runs:
        lines.append("")
        lines.append(f"{r['layers']} layers: uncompiled inference cells/s by batch size: " + ", ".join(
            f"{size}: {rate:.1f}" for size, rate in r["inference_by_batch_size"].items())
            + f"; compiling took {r['compile_seconds']:.0f} s; rounds (peak GFLOP/s, compiled, uncompiled cells/s): "
            + ", ".join(f"({p / 1e9:.0f}, {c:.1f}, {e:.1f})" for p, c, e in
                        zip(r["rounds"]["peak"], r["rounds"]["compiled"], r["rounds"]["eager"])) + ".")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="Measuring time per figure.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved peak / inference rounds per model size.")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks")
    parser.add_argument("--full_depth", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--render", nargs="?", const=REPO / "docs" / "benchmarks" / "speed.json", type=Path,
                        metavar="JSON", help="only the markdown, from a speed.json; measures nothing")
    args = parser.parse_args(argv)
    if args.render:
        args.render.with_suffix(".md").write_text(render(json.loads(args.render.read_text())))
        return

    report = {"date": date.today().isoformat(),
              "command": " ".join(["python benchmarks/speed.py", *(argv if argv is not None else sys.argv[1:])]),
              "seconds": args.seconds, "rounds": args.rounds, "matmul_size": MATMUL_SIZE, **cpu_description(),
              "chosen_backbone_dtype": str(select_backbone_dtype("cpu")).replace("torch.", "")}
    report["matmul_flops"] = {"float32": matmul_peak(torch.float32, args.seconds / 2),
                              "bfloat16": matmul_peak(torch.bfloat16, args.seconds / 2)}
    print(json.dumps({"matmul_flops": report["matmul_flops"]}), flush=True)
    peak_dtype = max(report["matmul_flops"], key=report["matmul_flops"].get)
    default = Recipe()
    runs = [(default.num_backbone_layers, default.n_top_genes)]
    runs += [(None, default.n_top_genes)] if args.full_depth else []
    report["runs"] = []
    for layers, k in runs:
        result = measure(layers, k, args.seconds, getattr(torch, peak_dtype), rounds=args.rounds)
        report["runs"].append(result)
        print(json.dumps(result), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "speed.md").write_text(render(report))
    default = report["runs"][0]
    print(json.dumps({
        "inference_cells_per_s": round(default["inference_cells_per_s"], 2),
        "naive_fp32_cells_per_s": round(default["naive_fp32_cells_per_s"], 2),
        "training_cells_per_s": round(default["training_cells_per_s"], 2),
        "matmul_peak_flops": max(report["matmul_flops"].values()),
        "peak_fraction": round(default["peak_fraction"], 3),
        "uncompiled_inference_cells_per_s": round(default["eager_inference_cells_per_s"], 2),
        "uncompiled_peak_fraction": round(default["eager_peak_fraction"], 3),
        "full_depth_peak_fraction": round(report["runs"][-1]["peak_fraction"], 3),
    }))


if __name__ == "__main__":
    main()
