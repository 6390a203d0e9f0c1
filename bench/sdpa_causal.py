"""Dense causal attention with PyTorch SDPA at the XAttention bench lengths (bf16,
H=32, D=128), the 'SDPA' column next to examples/bench_xattn in one device call.

  python3 bench/sdpa_causal.py [--json out.json] [L ...]   (default 32768 65536 131072)
"""
import argparse, json
import torch
import torch.nn.functional as F
import triton.testing as tt

ap = argparse.ArgumentParser()
ap.add_argument("--json")
ap.add_argument("lens", nargs="*", type=int, default=[32768, 65536, 131072])
a = ap.parse_args()
out = []
for L in a.lens:
    q, k, v = (torch.randn(1, 32, L, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    ms = tt.do_bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), warmup=10, rep=100, return_mode="median")
    tflops = 4 * 32 * 128 * (L * (L + 1) / 2) / ms / 1e9
    print(f"sdpa causal L={L:6d} {ms:9.3f} ms {tflops:7.1f} TFLOP/s(eff)", flush=True)
    out.append(dict(case=f"causal_{L // 1024}k", impl="sdpa_causal", ms=ms, eff_tflops=tflops, L=L, H=32, D=128))
    del q, k, v
    torch.cuda.empty_cache()
if a.json:
    json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, results=out), open(a.json, "w"), indent=1)
