"""Write tests/data/legacy_main_3a5503d: a tiny BTNet saved by save_pretrained at commit 3a5503d
(the per-call swapping mechanism), with the embeddings it gave, for the format-compatibility test.

Usage (at that commit): python tests/data/make_legacy_main.py tests/data/legacy_main_3a5503d
"""
import torch, timm, json, sys
from btnet_adapters import BTNet
torch.manual_seed(0)
torch.set_num_threads(1)
m = BTNet.from_timm("test_resnet", resolutions=(7, 14, 28), embed_dim=32, num_classes=10)
with torch.no_grad():
    for p in m.parameters(): p.add_(torch.randn_like(p) * 0.05)
    for n, b in m.named_buffers():
        if b.is_floating_point(): b.add_(torch.rand_like(b) * 0.1)
m.eval()
out = sys.argv[1]
m.save_pretrained(out, classifier=True)
g = torch.Generator().manual_seed(1)
xs = {r: torch.randn(2, 3, r, r, generator=g) for r in m.resolutions}
with torch.no_grad():
    embs = {str(r): m(x).tolist() for r, x in xs.items()}
json.dump({"seed": 1, "embeddings": embs}, open(out + "/expected_embeddings.json", "w"))
