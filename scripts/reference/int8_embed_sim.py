#!/usr/bin/env python3
"""Simulate int8 Linear layers in all-MiniLM-L6-v2 and measure cosine vs f32.

Weights: symmetric per output column, integer range [-wq, wq].
Activations: per token (row), asymmetric (zero point) in [0, aq] or symmetric in [-aq, aq].
Fake quantisation (quantise, dequantise, f32 matmul) is exact for integer accumulation
without saturation, which the kernel guarantees by the chosen ranges.
"""
import json, os, sys
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
from sentence_transformers import SentenceTransformer
torch.set_num_threads(1)
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
m = SentenceTransformer(f"{ROOT}/models/all-minilm-l6-v2", device="cpu")
fx = json.load(open(f"{ROOT}/crates/index/tests/fixtures/embed_minilm.json"))
fix_texts = [it["text"] for it in fx["items"]]
fix_ref = torch.tensor([it["embedding"] for it in fx["items"]])
queries = [json.loads(l)["text"] for l in open(f"{ROOT}/eval/retrieval/queries.jsonl")]
texts = fix_texts + queries
nf = len(fix_texts)

def emb():
    with torch.no_grad():
        return torch.tensor(m.encode(texts, batch_size=16, convert_to_numpy=True))

base = emb()
lins = [(n, mod) for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)]
orig = {n: (mod.weight.data.clone(), mod.forward) for n, mod in lins}

GROUP = 0
def qweight(w, wq):  # w [out, in]; per output column = per row of torch weight
    if GROUP:
        o, i = w.shape
        return qweight_flat(w.reshape(o * i // GROUP, GROUP), wq).reshape(o, i)
    return qweight_flat(w, wq)

def qweight_flat(w, wq):
    s = w.abs().amax(dim=1, keepdim=True) / wq
    s[s == 0] = 1
    return torch.round(w / s).clamp(-wq, wq) * s

def qact(x, aq, asym):
    if asym:
        lo = x.amin(dim=-1, keepdim=True).clamp(max=0)
        hi = x.amax(dim=-1, keepdim=True).clamp(min=0)
        s = (hi - lo) / aq
        s[s == 0] = 1
        z = torch.round(-lo / s)
        q = torch.round(x / s + z).clamp(0, aq)
        return (q - z) * s
    s = x.abs().amax(dim=-1, keepdim=True) / aq
    s[s == 0] = 1
    return torch.round(x / s).clamp(-aq, aq) * s

def install(wq, aq, asym, skip=()):
    for n, mod in lins:
        w0, f0 = orig[n]
        if any(k in n for k in skip):
            mod.weight.data = w0.clone(); mod.forward = f0; continue
        mod.weight.data = qweight(w0, wq) if wq else w0.clone()
        def fwd(x, mod=mod):
            xx = qact(x, aq, asym) if aq else x
            return torch.nn.functional.linear(xx, mod.weight, mod.bias)
        mod.forward = fwd

def restore():
    for n, mod in lins:
        mod.weight.data = orig[n][0].clone(); mod.forward = orig[n][1]

def report(name):
    e = emb()
    cf = torch.nn.functional.cosine_similarity(e, base)
    cr = torch.nn.functional.cosine_similarity(e[:nf], fix_ref)
    worst = texts[int(cf.argmin())][:50]
    print(f"{name:<44} vs f32: fixture min {cf[:nf].min():.6f} queries min {cf[nf:].min():.6f} "
          f"mean {cf.mean():.6f} | vs committed fixture min {cr.min():.6f} worst {worst!r}", flush=True)

cr = torch.nn.functional.cosine_similarity(base[:nf], fix_ref)
print(f"f32 torch vs committed fixture: min {cr.min():.7f}")
which = sys.argv[1]
if which == "sens":
    # Sensitivity: W8 per column + A8 asym per token on one kind of layer at a time.
    kinds = ["attention.self", "attention.output.dense", "intermediate.dense", "output.dense"]
    for k in kinds:
        skip = tuple(x for x in kinds if x != k)
        # 'output.dense' is a suffix of 'attention.output.dense': handle it by exact match
        install(127, 255, True, ()); 
        for n, mod in lins:
            is_k = (k in n) and not (k == "output.dense" and "attention" in n)
            if not is_k:
                mod.weight.data = orig[n][0].clone(); mod.forward = orig[n][1]
        report(f"only {k}"); restore()
elif which == "group":
    for g in (32, 64):
        GROUP = g
        install(127, 0, True, ()); report(f"W8 group {g}, f32 acts"); restore()
        install(127, 255, True, ()); report(f"W8 group {g}, A8 asym"); restore()
    GROUP = 0
elif which == "outlier":
    # Calibrate per-input-channel max |x| of every Linear on corpus text (not the test texts).
    import glob
    cal = []
    for f in sorted(glob.glob("/work/shared/data/corpus/*.jsonl"))[:4]:
        for i, line in enumerate(open(f)):
            if i >= 40: break
            t = json.loads(line).get("text", "")
            if t: cal.append(t[:600]); cal.append(t[:80])
    amax = {}
    hooks = []
    for n, mod in lins:
        def h(mod_, inp, out, n=n):
            x = inp[0].detach().abs().reshape(-1, inp[0].shape[-1]).amax(0)
            amax[n] = torch.maximum(amax.get(n, x), x)
        hooks.append(mod.register_forward_hook(h))
    with torch.no_grad():
        m.encode(cal, batch_size=16)
    for hk in hooks: hk.remove()
    print("calibration texts", len(cal))
    for n, _ in lins[:8]:
        a = amax[n]; print(n, "max", float(a.max()), "median", float(a.median()), "top8", [round(float(v),1) for v in a.topk(8).values])
    def install_out(topk, aq, group):
        global GROUP
        GROUP = group
        for n, mod in lins:
            w0, f0 = orig[n]
            idx = amax[n].topk(topk).indices if topk else torch.tensor([], dtype=torch.long)
            mask = torch.zeros(w0.shape[1], dtype=torch.bool); mask[idx] = True
            wq = qweight(w0, 127)
            wfull = w0.clone()
            def fwd(x, mod=mod, mask=mask, wq=wq, wfull=wfull):
                xi = x.masked_fill(mask, 0.0)
                xo = x * mask
                y = torch.nn.functional.linear(qact(xi, aq, True), wq, mod.bias)
                return y + torch.nn.functional.linear(xo, wfull)
            mod.forward = fwd
        GROUP = 0
    for topk in (4, 16):
        for group in (0, 32):
            install_out(topk, 255, group); report(f"outliers top{topk} f32, W8 g{group}, A8 asym"); restore()
