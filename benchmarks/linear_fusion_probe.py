"""Which linear gene scores to add to the head, and with what weight? Estimated from the default's saved test logits.

For each run of the 2026-12-07 default (`benchmarks/records/test_logits_2026-12-07b`: the head's logits, divided by
its validation temperature), an L2 logistic regression (C = 1, scikit-learn) is fitted on the same training cells (the
split's training cells less the seed's validation cells) on `top1024` (each cell's 1024 genes by excess: today's
input) or `panel` (every cell's log-normalised values on 2000 highly variable genes of the training cells, all
matched genes where there are fewer), unweighted or with `+bal` (`class_weight="balanced"`), and added to the head
with weight `wN` (`w1000`: the regression alone). Cells: test macro-F1, mean over 3 seeds. Minutes; no training.

    python benchmarks/linear_fusion_probe.py   # -> docs/benchmarks/linear_fusion_probe.{json,md}
"""
import json, sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent)); sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import anndata as ad, numpy as np, scanpy as sc
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from splits import score, splits
from linear_c_probe import saved_runs, scores_of, split_inputs
from scinterpreter.genes import build_gene_table
table=build_gene_table(); out={}
W=[0.5,1,1.5,2,3,1000]
for dataset, split, split_file, fold in splits(None):
    adata, labels, train, processor, top1024 = split_inputs(table, split_file, dataset, fold)
    values,_=processor.normalize(adata); values=sparse.csr_matrix(values)
    designs={"top1024": top1024}
    if values.shape[1]>2000:
        v=sc.pp.highly_variable_genes(ad.AnnData(values[train]), n_top_genes=2000, inplace=False)
        designs["panel"]=values[:, np.flatnonzero(v["highly_variable"].to_numpy())]
    else: designs["panel"]=values
    rows=[]
    for seed, N, head, cells, ref, saved, fit_part, _ in saved_runs(dataset, split, labels[train]):
        names=list(N); fc=train[fit_part]
        row={}
        for name,d in designs.items():
          for bal in (None,'balanced'):
            s=scores_of(LogisticRegression(C=1.0,max_iter=3000,class_weight=bal).fit(d[fc],labels[fc]), d[cells], names)
            for w in W: row[f"{name}{'+bal' if bal else ''} w{w}"]=score(ref,N[(head+w*s).argmax(1)])["macro_f1"]
        rows.append(row)
    out[f"{dataset}/{split}"]={k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    print(dataset,split,{k:round(v,3) for k,v in out[f"{dataset}/{split}"].items()},flush=True)
keys=list(next(iter(out.values())))
print("MEAN",{k:round(float(np.mean([v[k] for v in out.values()])),4) for k in keys})
target = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / "linear_fusion_probe"
target.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
rows = ["top1024", "top1024+bal", "panel", "panel+bal"]
lines = ["# Linear gene scores added to the head: input, class weights and weight, from the default's saved logits", "",
         "`python benchmarks/linear_fusion_probe.py`: test macro-F1 of head + w x regression, mean over 3 seeds (see the "
         "script's docstring); one table per regression, a column per weight w (1000: the regression alone).", ""]
for kind in rows:
    lines += [f"## {kind}", "", "| split | " + " | ".join(f"w{w}" for w in W) + " |", "|---|" + "---|" * len(W)]
    lines += [f"| {name} | " + " | ".join(f"{v[f'{kind} w{w}']:.3f}" for w in W) + " |" for name, v in out.items()]
    lines += ["| **mean** | " + " | ".join(f"{np.mean([v[f'{kind} w{w}'] for v in out.values()]):.3f}" for w in W)
              + " |", ""]
target.with_suffix(".md").write_text("\n".join(lines))
