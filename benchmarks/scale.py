"""Memory and speed of streaming annotation on large `.h5ad` files: peak RSS at 20k, 100k and 1M cells.

    python benchmarks/scale.py [--sizes 20000 100000 1000000] [--max_cells 100000] [--layers 1] [--name scale]
    python benchmarks/scale.py --render [docs/benchmarks/scale.json]   # only the markdown, from the JSON

Synthetic data with a real dataset's gene panel and count distribution: each synthetic cell is a real Baron human
cell (drawn with replacement), written to disk chunk by chunk as a
CSR matrix, so neither the generator nor the annotator ever holds the whole matrix. Each size is annotated by
`scinterpreter.annotate.annotate_h5ad` in a fresh process (backbone cut to `--layers` layers: memory is about
the data path, not the backbone); the process reports its own peak RSS. For sizes above `--max_cells`, only the
first chunks are annotated and the rate gives the time for the whole file. Writes docs/benchmarks/<name>.json and
<name>.md (the report, rendered from that JSON alone); the last line printed is one JSON object.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SOURCE = REPO.parent / "shared" / "data" / "scrna" / "baron_human_pancreas.h5ad"


def write_synthetic(path: Path, n_cells: int, chunk: int = 20000, seed: int = 0):
    """Writes an n_cells x genes raw-count `.h5ad` (CSR) from resampled real cells, one chunk at a time."""
    import anndata
    import h5py
    import pandas as pd
    from anndata.io import write_elem

    source = anndata.read_h5ad(SOURCE)
    counts = source.X.tocsr()
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as handle:
        write_elem(handle, "obs", pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)]))
        write_elem(handle, "var", pd.DataFrame(index=source.var_names))
        for key in ("obsm", "varm", "layers", "obsp", "varp", "uns"):
            write_elem(handle, key, {})
        group = handle.create_group("X")
        group.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                            "shape": (n_cells, source.n_vars)})
        data = group.create_dataset("data", (0,), maxshape=(None,), dtype="float32", chunks=(1 << 20,))
        indices = group.create_dataset("indices", (0,), maxshape=(None,), dtype="int32", chunks=(1 << 20,))
        indptr = [0]
        for start in range(0, n_cells, chunk):
            rows = counts[rng.integers(0, counts.shape[0], min(chunk, n_cells - start))]
            offset = data.shape[0]
            data.resize((offset + rows.nnz,))
            indices.resize((offset + rows.nnz,))
            data[offset:] = rows.data
            indices[offset:] = rows.indices
            indptr.extend((rows.indptr[1:] + offset).tolist())
        group.create_dataset("indptr", data=np.asarray(indptr, dtype=np.int64))
    return path


CHILD = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
from scinterpreter.annotate import annotate_h5ad
started = time.perf_counter()
annotate_h5ad({path!r}, {model!r}, {out!r}, chunk_size={chunk}, batch_size=128, max_chunks={max_chunks},
              compile_backbone={compile_backbone})
seconds = time.perf_counter() - started
print(json.dumps({{"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def annotate_in_fresh_process(path, model, out, chunk, max_chunks, compile_backbone=False):
    code = CHILD.format(repo=str(REPO), path=str(path), model=str(model), out=str(out), chunk=chunk,
                        max_chunks=max_chunks, compile_backbone=compile_backbone)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def render(report: dict) -> str:
    """The markdown report of a scale.py JSON, every figure taken from it (what it lacks is said so)."""
    command = report.get("command", "python benchmarks/scale.py")
    recorded = "" if "command" in report else " (command line not recorded)"
    cores = f"{report['cpu_cores']} CPU cores" if "cpu_cores" in report else "CPU cores not recorded"
    genes = f"{report['n_genes']:,} genes" if "n_genes" in report else "gene count not recorded"
    compiled = {True: "backbone under torch.compile", False: "backbone uncompiled"}.get(
        report.get("compile_backbone"), "backbone compilation not recorded")
    lines = ["# Streaming annotation at scale", "",
             f"`{command}`{recorded} on {report['date']}, {cores}; backbone cut to {report['layers']} layer(s), "
             f"chunks of {report['chunk_size']:,} cells, synthetic raw counts resampled from Baron human ({genes}); "
             f"{compiled}.", "",
             "| cells in file | cells annotated | file GB | cells/s | peak RSS MB | hours for the whole file |",
             "|---|---|---|---|---|---|"]
    for r in report["records"]:
        lines.append(f"| {r['n_cells']:,} | {r['annotated_cells']:,} | {r['file_gb']} | {r['cells_per_s']} | "
                     f"{r['peak_rss_mb']} | {r['estimated_hours_for_all']} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000, 1000000])
    parser.add_argument("--max_cells", type=int, default=100000,
                        help="Annotate at most this many cells of a file; larger files give a rate.")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--compile_backbone", action=argparse.BooleanOptionalAction, default=False,
                        help="Annotate with the backbone under torch.compile (as annotate does from "
                             "pipeline_scinterpreter.COMPILE_MIN_CELLS cells on); off by default: this benchmark "
                             "measures the data path.")
    parser.add_argument("--chunk_size", type=int, default=4096)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/scinterpreter_scale"))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks")
    parser.add_argument("--name", default=None,
                        help="File name of the report, without suffix (default: scale, or scale_compiled with "
                             "--compile_backbone).")
    parser.add_argument("--render", nargs="?", const=REPO / "docs" / "benchmarks" / "scale.json", type=Path,
                        metavar="JSON", help="only the markdown, from a scale.py JSON; annotates nothing")
    args = parser.parse_args(argv)
    if args.render:
        args.render.with_suffix(".md").write_text(render(json.loads(args.render.read_text())))
        return
    import shutil

    from scinterpreter.build import build_model, save_model_folder

    args.workdir.mkdir(parents=True, exist_ok=True)
    model_dir = args.workdir / "model"
    if not (model_dir / "config.json").is_file():
        # Unfitted, so genes are chosen by expression (the recipe's `excess` needs a reference profile).
        model, processor = build_model([f"type{i}" for i in range(14)], num_backbone_layers=args.layers,
                                       gene_selection="expression")
        save_model_folder(model, processor, model_dir)
    records = []
    for n_cells in args.sizes:
        path = args.workdir / f"synthetic_{n_cells}.h5ad"
        started = time.perf_counter()
        if not path.is_file():
            write_synthetic(path, n_cells)
        write_seconds = time.perf_counter() - started
        out = args.workdir / f"annotated_{n_cells}"
        shutil.rmtree(out, ignore_errors=True)
        max_chunks = None if n_cells <= args.max_cells else max(1, args.max_cells // args.chunk_size)
        measured = annotate_in_fresh_process(path, model_dir, out, args.chunk_size, max_chunks, args.compile_backbone)
        annotated = n_cells if max_chunks is None else min(n_cells, max_chunks * args.chunk_size)
        rate = annotated / measured["seconds"]
        record = {"n_cells": n_cells, "annotated_cells": annotated, "file_gb": round(path.stat().st_size / 1e9, 2),
                  "write_seconds": round(write_seconds, 1), "annotate_seconds": round(measured["seconds"], 1),
                  "cells_per_s": round(rate, 1), "peak_rss_mb": round(measured["peak_rss_mb"], 1),
                  "estimated_hours_for_all": round(n_cells / rate / 3600, 2)}
        records.append(record)
        print(json.dumps(record), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    import anndata

    n_genes = anndata.read_h5ad(SOURCE, backed="r").n_vars
    report = {"date": date.today().isoformat(),
              "command": " ".join(["python benchmarks/scale.py", *(argv if argv is not None else sys.argv[1:])]),
              "cpu_cores": os.cpu_count(), "n_genes": n_genes, "layers": args.layers, "chunk_size": args.chunk_size,
              "max_cells": args.max_cells, "compile_backbone": args.compile_backbone, "records": records}
    stem = args.name or ("scale_compiled" if args.compile_backbone else "scale")
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(render(report))
    rss = {r["n_cells"]: r["peak_rss_mb"] for r in records}
    summary = {"peak_rss_mb": rss}
    if 20000 in rss and 100000 in rss:
        summary["rss_ratio_100k_over_20k"] = round(rss[100000] / rss[20000], 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
