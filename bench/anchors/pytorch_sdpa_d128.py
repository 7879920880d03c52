# The D = 128 rows of pytorch_sdpa.py (bench/anchors) from N = 4096 on, with its own
# measuring code (case()): run on the GPU machine from the project root when a full run was cut short.
import json, sys, torch
sys.path.insert(0, 'bench/anchors')
import pytorch_sdpa as p
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
print(json.dumps(dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__)), flush=True)
D = 128
for N in (4096, 8192, 16384):
    B, H = max(1, 16384 // N), 2048 // D
    for causal in (False, True):
        for dtype, backends in ((torch.float16, ('flash', 'cudnn', 'efficient', 'math')), (torch.float32, ('math', 'efficient'))):
            for b in backends:
                if b == 'math' and N > 8192: continue
                if dtype == torch.float32 and N > 4096: continue
                p.case(b, dtype, B, H, N, D, causal, bwd=(N <= 8192))
