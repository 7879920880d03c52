#!/usr/bin/env python3
"""Make the tiny GPT-2 fixture of test/gpt2.test.ts with Hugging Face transformers, offline.

    python3 bench/models/make_gpt2_fixture.py test/fixtures/gpt2-tiny

What it writes into OUTDIR (about 8.8 MB in all, under the 10 MB a fixture may take):
  config.json, model.safetensors  GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=64,
                                  n_positions=128, vocab_size=50257)) by save_pretrained (safetensors), its
                                  weights stored in F16 (6.6 MB; in F32 the 50257 x 64 token embedding
                                  alone would be 12.9 MB). Seeded: torch.manual_seed(0), initializer_range
                                  0.2 (GPT-2's 0.02 makes the logits of 50257 tokens so close that greedy
                                  steps become near ties), then every bias and layer norm parameter moved by
                                  N(0, 0.1) noise, so that loading them wrong shows.
  logits.safetensors              F32 logits of the f32 model whose weights are exactly the F16 file's
                                  values: last_logits (prompts, 50257), the last position of each prompt;
                                  full_logits (n, 50257), every position of prompt 0.
  expected.json                   the prompts (GPT-2 token ids, given below, so no tokenizer is needed),
                                  the greedy continuation of 20 tokens of each (argmax of the f32 logits,
                                  recomputed over the whole sequence each step, never stopping at
                                  end-of-text) with each step's margin between the best and second-best
                                  logit, and the versions of torch and transformers.
save_pretrained also writes generation_config.json, kept as it is. No tokenizer files are written (the
test works on token ids, and readGPT2 falls back to GPT-2's own vocabulary from the gpt-tokenizer
package, which the test checks against the texts beside the prompts). Nothing is downloaded
(HF_HUB_OFFLINE); everything runs on the CPU in float32 (no TF32), so the figures do not depend on the GPU.
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

# GPT-2 token ids (r50k_base) of three prompts, the texts beside them for a reader.
PROMPTS = [
    # "The quick brown fox jumps over the lazy dog."
    [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13],
    # "Hello, my dog is cute"
    [15496, 11, 616, 3290, 318, 13779],
    # "In a shocking finding, scientists discovered a herd of unicorns living in a remote, previously
    # unexplored valley"
    [818, 257, 14702, 4917, 11, 5519, 5071, 257, 27638, 286, 28000, 19942, 2877, 287, 257, 6569, 11, 4271, 31286, 1850, 19272],
]
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, my dog is cute",
    "In a shocking finding, scientists discovered a herd of unicorns living in a remote, previously unexplored valley",
]
FULL_PROMPT = 0
GREEDY_STEPS = 20


def main(out: str) -> None:
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    config = GPT2Config(
        vocab_size=50257,
        n_positions=128,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_inner=None,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        initializer_range=0.2,
        embd_pdrop=0.0,
        resid_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=50256,
        eos_token_id=50256,
    )
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
        # The f32 model holds exactly the values the F16 file stores.
        for p in model.parameters():
            p.copy_(p.half().float())

    os.makedirs(out, exist_ok=True)
    half = GPT2LMHeadModel(config).eval()
    half.load_state_dict(model.state_dict())
    try:
        half.half().save_pretrained(out, safe_serialization=True)
    except TypeError:  # transformers versions that write safetensors only take no such argument
        half.half().save_pretrained(out)
    if not os.path.exists(os.path.join(out, "model.safetensors")):
        sys.exit(f"save_pretrained wrote no model.safetensors into {out}: {sorted(os.listdir(out))}")

    def logits(ids: list) -> torch.Tensor:
        with torch.no_grad():
            return model(torch.tensor([ids], dtype=torch.long)).logits[0].float()

    last = torch.stack([logits(p)[-1] for p in PROMPTS])
    full = logits(PROMPTS[FULL_PROMPT])
    save_file({"last_logits": last.contiguous(), "full_logits": full.contiguous()}, os.path.join(out, "logits.safetensors"))

    greedy = []
    for prompt in PROMPTS:
        ids = list(prompt)
        tokens, margins = [], []
        for _ in range(GREEDY_STEPS):
            row = logits(ids)[-1]
            top = torch.topk(row, 2)
            token = int(torch.argmax(row))
            tokens.append(token)
            margins.append(float(top.values[0] - top.values[1]))
            ids.append(token)
        greedy.append({"tokens": tokens, "margins": margins})

    expected = {
        "made_by": "python3 bench/models/make_gpt2_fixture.py " + out,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "seed": 0,
        "file_dtype": "F16",
        "logits": "f32, from the f32 model whose weights are the F16 file's values, on the CPU",
        "prompts": PROMPTS,
        "texts": TEXTS,
        "full_prompt": FULL_PROMPT,
        "greedy": greedy,
    }
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    sizes = {name: os.path.getsize(os.path.join(out, name)) for name in sorted(os.listdir(out))}
    smallest = min(m for g in greedy for m in g["margins"])
    print(json.dumps({"out": out, "bytes": sizes, "total_mb": round(sum(sizes.values()) / 2**20, 2), "smallest_greedy_margin": smallest}))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 bench/models/make_gpt2_fixture.py OUTDIR")
    main(sys.argv[1])
