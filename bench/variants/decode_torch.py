"""Lab notebook beside bench/variants/decode.ts: PyTorch SDPA decode (Nq = 1, f16, D per case) on the same
cases, flash and cuDNN backends, CUDA events over 100 calls; K/V bytes read per second."""
import json, torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend

CASES = [(8, 32, 8, 32768, 128), (32, 32, 32, 4096, 128), (1, 32, 8, 131072, 128), (8, 32, 8, 4096, 64)]
print(json.dumps(dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__)))
for B, H, Hkv, Nk, D in CASES:
    q = torch.randn(B, H, 1, D, device='cuda', dtype=torch.float16)
    k = torch.randn(B, Hkv, Nk, D, device='cuda', dtype=torch.float16)
    v = torch.randn(B, Hkv, Nk, D, device='cuda', dtype=torch.float16)
    for name, be in (('flash', SDPBackend.FLASH_ATTENTION), ('cudnn', SDPBackend.CUDNN_ATTENTION)):
        try:
            with sdpa_kernel([be]):
                f = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=(H != Hkv))
                for _ in range(10): f()
                torch.cuda.synchronize()
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                best = 1e9
                for _ in range(3):
                    s.record()
                    for _ in range(100): f()
                    e.record(); torch.cuda.synchronize()
                    best = min(best, s.elapsed_time(e) / 100)
            gbs = 2 * B * Nk * Hkv * D * 2 / (best / 1e3) / 1e9
            print(json.dumps(dict(backend=name, B=B, H=H, Hkv=Hkv, Nk=Nk, D=D, ms=round(best, 4), GBps=round(gbs))), flush=True)
        except Exception as ex:
            print(json.dumps(dict(backend=name, B=B, H=H, Hkv=Hkv, Nk=Nk, D=D, error=str(ex)[:120])), flush=True)
