"""PyTorch SDPA decode on the GPU machine (python3 there has torch): the figures beside `flashattn bench --suite
decode`. Same grid: f16, Nq = 1, not causal, Nk in 1k..128k, B in 1, 8, 32, (H, Hkv) = (32, 8) and (32, 32),
D = 64 and 128, less the cases whose K and V pass 16 GiB (those PyTorch can run past our 2 GiB binding limit
are kept: the bench shows them as not run for us). q (B, H, 1, D), k and v (B, Hkv, Nk, D), contiguous
(SDPA's own layout). Flash and cuDNN backends; grouped-query heads with enable_gqa=True, or, where a backend
refuses it, with K and V expanded by repeat_interleave before timing (the line's gqa field says which; GB/s
still counts the Hkv heads). Timed with CUDA events: 10 warm-up calls, then 5 samples of 100 back-to-back
calls; ms is the median sample / 100. Prints {gpu, torch}, then one JSON line per case and backend:
{backend, dtype, B, H, Hkv, Nk, D, gqa?, ms, min_ms, max_ms, GBps} or {..., error}."""
import json, statistics, torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend

BACKENDS = {'flash': SDPBackend.FLASH_ATTENTION, 'cudnn': SDPBackend.CUDNN_ATTENTION}
MAX_KV_BYTES = 16 * 2**30
CALLS, SAMPLES, WARM = 100, 5, 10

def grid():
    for D in (64, 128):
        for H, Hkv in ((32, 8), (32, 32)):
            for B in (1, 8, 32):
                for Nk in (1024, 4096, 16384, 32768, 131072):
                    if 2 * B * Nk * Hkv * D * 2 <= MAX_KV_BYTES:
                        yield B, H, Hkv, Nk, D

def timeit(fn):
    for _ in range(WARM): fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ms = []
    for _ in range(SAMPLES):
        s.record()
        for _ in range(CALLS): fn()
        e.record(); torch.cuda.synchronize()
        ms.append(s.elapsed_time(e) / CALLS)
    return statistics.median(ms), min(ms), max(ms)

def case(backend, q, k, v, B, H, Hkv, Nk, D):
    r = dict(backend=backend, dtype='float16', B=B, H=H, Hkv=Hkv, Nk=Nk, D=D)
    kv_bytes = 2 * B * Nk * Hkv * D * 2
    try:
        with sdpa_kernel([BACKENDS[backend]]):
            if H == Hkv:
                f = lambda: F.scaled_dot_product_attention(q, k, v)
            else:
                try:
                    F.scaled_dot_product_attention(q, k, v, enable_gqa=True); torch.cuda.synchronize()
                    f = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                    r['gqa'] = 'enable_gqa'
                except Exception:
                    ke, ve = (x.repeat_interleave(H // Hkv, dim=1) for x in (k, v))
                    f = lambda: F.scaled_dot_product_attention(q, ke, ve)
                    r['gqa'] = 'repeat_interleave'
            ms, lo, hi = timeit(f)
        r.update(ms=round(ms, 5), min_ms=round(lo, 5), max_ms=round(hi, 5), GBps=round(kv_bytes / (ms * 1e6), 1))
    except Exception as ex:
        r['error'] = str(ex).split('\n')[0][:160]
    torch.cuda.empty_cache()
    print(json.dumps(r), flush=True)

if __name__ == '__main__':
    print(json.dumps(dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__)), flush=True)
    for B, H, Hkv, Nk, D in grid():
        try:
            q = torch.randn(B, H, 1, D, device='cuda', dtype=torch.float16)
            k, v = (torch.randn(B, Hkv, Nk, D, device='cuda', dtype=torch.float16) for _ in range(2))
        except Exception as ex:
            for b in BACKENDS:
                print(json.dumps(dict(backend=b, dtype='float16', B=B, H=H, Hkv=Hkv, Nk=Nk, D=D, error=str(ex).split('\n')[0][:160])), flush=True)
            torch.cuda.empty_cache(); continue
        for b in BACKENDS:
            case(b, q, k, v, B, H, Hkv, Nk, D)
        del q, k, v; torch.cuda.empty_cache()
