#!/usr/bin/env python3
"""GPT-2 small (124M) with Hugging Face transformers on PyTorch: the checkpoint both sides load, and its speed.

    python3 bench/models/gpt2_speed_hf.py make DIR [--check N]   GPT2LMHeadModel(GPT2Config()) with seeded random
                                                  weights, saved by save_pretrained as F16 safetensors in DIR, and
                                                  DIR/reference.json: the greedy continuation (N tokens, default 16)
                                                  of prompt 0 at batch 1 and the last-position logits of its prompt
                                                  (reference.safetensors), for gpt2-speed.ts to compare against
    python3 bench/models/gpt2_speed_hf.py eager DIR    decode and prefill, eager PyTorch (model.generate)
    python3 bench/models/gpt2_speed_hf.py compile DIR  decode with cache_implementation="static", which makes
                                                  generate() compile the decode step with torch.compile

Each line of stdout is one JSON object. Decode: prompts of PROMPT tokens (the same ids as gpt2-speed.ts,
prompt_ids below) at batch 1 and 16, greedy, exactly NEW new tokens (min_new_tokens = max_new_tokens, so
end-of-text does not stop it); the first new token comes from the prefill, so decode makes NEW - 1 tokens
per sequence and its time is generate(NEW) - generate(1) (medians of REPEATS and REPEATS + 1 runs after a
warm-up; the median of two is their mean).
Prefill: one sequence of PREFILL tokens through model() (cache on, logits of every position) with
PyTorch's scaled_dot_product_attention ("sdpa") and with transformers' eager attention (matmul, softmax,
matmul), CUDA-synchronised wall time, median of 10 after 3 warm-ups. f16 weights and activations on the
GPU; TF32 off. Nothing is downloaded (HF_HUB_OFFLINE).
"""
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

# GPT2_SPEED_* override the sizes and the device, to try the script on a CPU at small sizes first.
PROMPT = int(os.environ.get("GPT2_SPEED_PROMPT", 512))
NEW = int(os.environ.get("GPT2_SPEED_NEW", 256))
PREFILL = int(os.environ.get("GPT2_SPEED_PREFILL", 1024))
BATCHES = tuple(int(b) for b in os.environ.get("GPT2_SPEED_BATCHES", "1,16").split(","))
REPEATS = 2
DEVICE = os.environ.get("GPT2_SPEED_DEVICE", "cuda")
VOCAB = 50257
EOS = 50256


def prompt_ids(batch: int, n: int) -> list:
    """Token ids of `batch` prompts of n tokens, never end-of-text: the same in gpt2-speed.ts."""
    return [[(1 + 7919 * b + 104729 * i) % EOS for i in range(n)] for b in range(batch)]


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def sync_time(f) -> float:
    sync()
    t0 = time.perf_counter()
    f()
    sync()
    return time.perf_counter() - t0


def load(folder: str, attn: str = "sdpa") -> GPT2LMHeadModel:
    try:
        model = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float16, attn_implementation=attn)
    except TypeError:  # transformers before `dtype`
        model = GPT2LMHeadModel.from_pretrained(folder, torch_dtype=torch.float16, attn_implementation=attn)
    return model.to(DEVICE).eval()


def make(folder: str, check: int) -> None:
    torch.manual_seed(0)
    config = GPT2Config()  # GPT-2 small: 12 layers, 12 heads, 768 wide, 1024 positions, 50257 tokens
    model = GPT2LMHeadModel(config).eval()
    params = sum(p.numel() for p in model.parameters())
    model = model.half()
    os.makedirs(folder, exist_ok=True)
    try:
        model.save_pretrained(folder, safe_serialization=True)
    except TypeError:
        model.save_pretrained(folder)
    files = {name: os.path.getsize(os.path.join(folder, name)) for name in sorted(os.listdir(folder))}
    emit(kind="checkpoint", folder=folder, params=params, files=files, config={k: getattr(config, k) for k in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size")})
    # What gpt2-speed.ts compares its own model with: transformers' f16 model on the GPU, prompt 0.
    from safetensors.torch import save_file

    model = load(folder)
    ids = torch.tensor(prompt_ids(1, PROMPT), device=DEVICE)
    with torch.no_grad():
        logits = model(ids).logits[0, -1].float().cpu()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=check, min_new_tokens=check, do_sample=False, pad_token_id=EOS)
    save_file({"last_logits": logits.contiguous()}, os.path.join(folder, "reference.safetensors"))
    tokens = out[0, PROMPT:].tolist()
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump({"prompt": 0, "prompt_tokens": PROMPT, "greedy": tokens}, f)
    emit(kind="reference", greedy=tokens, logits_range=float(logits.max() - logits.min()))


def decode_rows(model: GPT2LMHeadModel, label: str, **kwargs) -> None:
    for batch in BATCHES:
        ids = torch.tensor(prompt_ids(batch, PROMPT), device=DEVICE)
        mask = torch.ones_like(ids)

        def run(n: int):
            with torch.no_grad():
                return model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=EOS, **kwargs)

        t0 = time.perf_counter()
        out = run(NEW)  # warm-up (and, for compile, the compilations)
        sync()
        warm = time.perf_counter() - t0
        assert out.shape == (batch, PROMPT + NEW), out.shape
        run(1)
        first = [sync_time(lambda: run(1)) for _ in range(REPEATS + 1)]
        full = [sync_time(lambda: run(NEW)) for _ in range(REPEATS)]
        t1, tn = statistics.median(first), statistics.median(full)
        tokens = batch * (NEW - 1)
        emit(kind="decode", impl=label, batch=batch, prompt=PROMPT, new=NEW, warmup_s=round(warm, 3), generate1_s=[round(t, 5) for t in first],
             generate_s=[round(t, 5) for t in full], decode_tokens=tokens, decode_s=round(tn - t1, 5), tokens_per_s=round(tokens / (tn - t1), 1),
             prefill_tokens_per_s=round(batch * PROMPT / t1, 1))


def prefill_rows(folder: str) -> None:
    ids = torch.tensor(prompt_ids(1, PREFILL), device=DEVICE)
    for attn in ("sdpa", "eager"):
        model = load(folder, attn)
        with torch.no_grad():
            f = lambda: model(ids, use_cache=True)  # noqa: E731
            for _ in range(3):
                f()
            times = [sync_time(f) for _ in range(10)]
        emit(kind="prefill", impl=f"transformers eager ({attn} attention)", tokens=PREFILL, ms=round(1000 * statistics.median(times), 3), ms_min=round(1000 * min(times), 3),
             ms_max=round(1000 * max(times), 3))
        del model
        if DEVICE == "cuda":
            torch.cuda.empty_cache()


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] not in ("make", "eager", "compile"):
        sys.exit("usage: python3 bench/models/gpt2_speed_hf.py make|eager|compile DIR [--check N]")
    mode, folder = sys.argv[1], sys.argv[2]
    torch.backends.cuda.matmul.allow_tf32 = False
    emit(kind="environment", mode=mode, torch=torch.__version__, transformers=transformers.__version__, cuda=torch.version.cuda,
         gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    if mode == "make":
        make(folder, int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--check" else 16)
    elif mode == "eager":
        model = load(folder)
        emit(kind="model", attn_implementation=model.config._attn_implementation, dtype=str(model.dtype))
        decode_rows(model, "transformers eager (DynamicCache)")
        del model
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
        prefill_rows(folder)
    else:
        model = load(folder)
        decode_rows(model, "transformers torch.compile (static cache)", cache_implementation="static")
        try:
            from torch._dynamo.utils import counters

            emit(kind="compile", dynamo_stats={k: dict(v) for k, v in counters.items() if k in ("stats", "graph_break")})
        except Exception as e:  # noqa: BLE001
            emit(kind="compile", dynamo_stats=f"unavailable: {e}")


if __name__ == "__main__":
    main()
