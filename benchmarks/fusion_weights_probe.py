"""How should the head's logits and a logistic regression on more genes be added? Estimated from saved test logits.

For the session-14 default's saved runs (`benchmarks/recipes.py --logits_dir`, files that carry the linear gene
scores' share), the head's logits (the logits minus that share) are combined with an L2 logistic regression (C = 1,
scikit-learn) on each cell's top-K genes by excess, fitted on the split's training cells: `raw`, the two added as
they are (the session-14 product); `Th`, the head first divided by its validation temperature (read from the same
seed's run of the session-12 default in `test_logits_2026-11-27`: the same head, identical test predictions); `stack`,
a weight for each part fitted by log-loss on half of the test cells and scored on the other half (a stand-in for
fitting them on the validation cells). Minutes; no training.

    python benchmarks/fusion_weights_probe.py 1024   # -> docs/benchmarks/fusion_weights_probe_1024.{json,md}
"""
import json, glob, sys
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, str(Path(__file__).resolve().parent))
from safetensors import safe_open
from splits import load_split, score, splits
from ceiling_probe import chosen_genes
from scinterpreter.build import build_processor
from scinterpreter.genes import build_gene_table
from sklearn.linear_model import LogisticRegression
K=int(sys.argv[1]) if len(sys.argv)>1 else 1024
def load(p):
    with safe_open(p,'np') as h: return h.metadata(), {k:h.get_tensor(k) for k in h.keys()}
def fitw(h,l,y,mode):
    h=torch.tensor(h,dtype=torch.float64); l=torch.tensor(l,dtype=torch.float64); y=torch.tensor(y)
    p=torch.zeros(2 if mode=='two' else 1,dtype=torch.float64,requires_grad=True)
    opt=torch.optim.LBFGS([p],max_iter=200,line_search_fn='strong_wolfe')
    def clo():
        opt.zero_grad()
        a=torch.exp(p[0]); b=torch.exp(p[1]) if mode=='two' else a
        z=a*h+b*l
        loss=torch.nn.functional.cross_entropy(z,y); loss.backward(); return loss
    opt.step(clo); e=torch.exp(p.detach()).numpy()
    return (e[0],e[1]) if mode=='two' else (e[0],e[0])
table=build_gene_table(); out={}
rng=np.random.default_rng(0)
for dataset, split, split_file, fold in splits(None):
    adata, labels, train, test = load_split(dataset, split_file, fold)
    position={c:i for i,c in enumerate(test)}
    proc=build_processor(table,n_top_genes=K,gene_selection="excess"); proc.fit(adata[train])
    F=chosen_genes(proc(adata,return_tensors="np"),len(table.vocab))
    reg=LogisticRegression(C=1.0,max_iter=3000).fit(F[train],labels[train])
    dec=reg.decision_function(F[test]); cls=list(reg.classes_)
    res=[]
    for p in sorted(glob.glob(f'benchmarks/records/test_logits_2026-12-07/linear_genes__{dataset}__{split}__seed*')):
        m,t=load(p); names=json.loads(m['labels']); N=np.array(names); ref=N[t['references']]
        h=t['logits']-t['linear_gene_scores']; cells=t['test_cells']
        l=np.zeros_like(h)
        for j,n in enumerate(names):
            if n in cls: l[:,j]=dec[[position[c] for c in cells],cls.index(n)]
            else: l[:,j]=-1e3
        m0,_=load(p.replace('2026-12-07/linear_genes','2026-11-27/k32+pool_class_and_mean')); Th=float(m0['temperature'])
        y=t['references']
        r={'head':score(ref,N[h.argmax(1)])['macro_f1'],'lin':score(ref,N[l.argmax(1)])['macro_f1'],
           'raw':score(ref,N[(h+l).argmax(1)])['macro_f1'],'Th':score(ref,N[(h/Th+l).argmax(1)])['macro_f1']}
        for mode in ['two']:
            pred=np.empty(len(y),dtype=int); idx=rng.permutation(len(y)); halves=[idx[::2],idx[1::2]]
            ws=[]
            for a_,b_ in [(0,1),(1,0)]:
                fi,ev=halves[a_],halves[b_]
                a,b=fitw(h[fi],l[fi],y[fi],mode); ws.append(round(float(a/b),2))
                pred[ev]=(a*h[ev]+b*l[ev]).argmax(1)
            r['stack']=score(ref,N[pred])['macro_f1']; r['ratio']=float(np.mean(ws))
        res.append(r)
    out[f'{dataset}/{split}']={k:float(np.mean([r[k] for r in res])) for k in res[0]}
    print(f'{dataset}/{split}'.ljust(40),' '.join(f'{k}={v:.3f}' for k,v in out[f'{dataset}/{split}'].items()),flush=True)
keys=list(next(iter(out.values())))
print('MEAN'.ljust(40),' '.join(f'{k}={np.mean([v[k] for v in out.values()]):.3f}' for k in keys))
OUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / f"fusion_weights_probe_{K}"
OUT.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
lines = [f"# Adding the head and a logistic regression on {K} genes per cell: raw, head temperature first, or fitted weights",
         "", f"`python benchmarks/fusion_weights_probe.py {K}`: test macro-F1, mean over 3 seeds (see the script's docstring).",
         "", "| split | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
lines += [f"| {name} | " + " | ".join(f"{v[k]:.3f}" for k in keys) + " |" for name, v in out.items()]
lines += ["| **mean** | " + " | ".join(f"{np.mean([v[k] for v in out.values()]):.3f}" for k in keys) + " |"]
OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
