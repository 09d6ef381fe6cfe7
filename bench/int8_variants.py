"""Cosine of int8 vs fp32 dense and ColBERT vectors for int8 variants (per-tensor/per-channel, layers kept fp32) on 300 cacm texts of minilm-m3."""
import sys, copy, time, warnings
import numpy as np, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from minilm_m3_eval import read_collection
from m3_rag import M3Encoder
from torch.ao.quantization import quantize_dynamic, per_channel_dynamic_qconfig, default_dynamic_qconfig
torch.set_num_threads(2)
warnings.simplefilter("ignore")
enc = M3Encoder.from_pretrained("minilm-m3", device="cpu")
_, dt, _, qt, _ = read_collection("cacm")
texts = qt[:100] + dt[:200]
base_bb = copy.deepcopy(enc.backbone)
def run():
    o = enc.encode(texts, sparse=False, max_length=512, show_progress=False)
    return o
ref = run()
def score(o):
    d = np.sum(np.asarray(ref.dense) * np.asarray(o.dense), 1)
    cs = [np.sum(a*b, 1).mean() for a, b in zip(ref.colbert, o.colbert)]
    return f"dense cos mean {d.mean():.5f} min {d.min():.5f} | colbert cos mean {np.mean(cs):.5f} min {np.min(cs):.5f}"
def names_all(bb):
    return [n for n, m in bb.named_modules() if isinstance(m, torch.nn.Linear)]
allL = names_all(base_bb)
print(len(allL), allL[:8], allL[-6:])
def variant(qc, skip=lambda n: False):
    bb = copy.deepcopy(base_bb)
    spec = {n: qc for n in allL if not skip(n)}
    enc.backbone = quantize_dynamic(bb, spec, dtype=torch.qint8)
    t = time.time(); o = run(); return score(o) + f" | {time.time()-t:.1f}s"
last = max(int(n.split("layer.")[1].split(".")[0]) for n in allL if "layer." in n)
for name, qc, skip in [
    ("per-tensor", default_dynamic_qconfig, lambda n: False),
    ("per-channel", per_channel_dynamic_qconfig, lambda n: False),
    ("per-channel, last layer fp32", per_channel_dynamic_qconfig, lambda n: f"layer.{last}." in n),
    ("per-channel, FFN output dense fp32", per_channel_dynamic_qconfig, lambda n: n.endswith("output.dense") and "attention" not in n),
    ("per-tensor, FFN output dense fp32", default_dynamic_qconfig, lambda n: n.endswith("output.dense") and "attention" not in n),
]:
    print(name, variant(qc, skip), flush=True)
enc.backbone = base_bb
t = time.time(); run(); print("fp32", f"{time.time()-t:.1f}s")
