"""The reference for `flora bench`: training steps of HuggingFace's RobertaForMaskedLM with the
same configuration and batch (AdamW, PyTorch's own optimizer, where flora uses LAMB; gradients
clipped to a norm of 1.0 as HuggingFace's Trainer and flora's pretraining clip them), in f32 or
bf16 autocast, on a GPU or the CPU; and a GPU's bf16 matrix-product rate (the ceiling for model
FLOP utilisation).

    python3 benches/torch_step.py --matmul
    python3 benches/torch_step.py --precision bf16 --attn sdpa --batch 84 --steps 20
    python3 benches/torch_step.py --device cpu --batch 8 --steps 3

Prints one JSON object per run. Run by benches/gpu/run.sh and `cargo bench --bench pretrain`
where PyTorch and transformers are installed; not part of the test suite.
"""

import argparse
import json
import resource
import statistics
import time

import torch


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_rate(n=8192, reps=10):
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    t = statistics.median(times)
    return {"what": "matmul", "n": n, "dtype": "bf16", "seconds": t, "tflops": 2 * n**3 / t / 1e12}


def train_steps(args):
    import transformers as T

    cfg = T.RobertaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=args.intermediate,
        max_position_embeddings=args.len + 3,
        pad_token_id=2,
        bos_token_id=0,
        eos_token_id=1,
    )
    cfg._attn_implementation = args.attn
    torch.manual_seed(0)
    dev = args.device
    model = T.RobertaForMaskedLM(cfg).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(5, args.vocab, (args.batch, args.len), device=dev)
    ids[:, 0], ids[:, -1] = 0, 1
    labels = ids.clone()
    labels[torch.rand(ids.shape, device=dev) > 0.15] = -100
    attention = torch.ones_like(ids)
    times, loss = [], float("nan")
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for s in range(args.steps + args.warmup):
        sync(dev)
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            out = model(input_ids=ids, attention_mask=attention, labels=labels)
        out.loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        loss = out.loss.item()
        sync(dev)
        if s >= args.warmup:
            times.append(time.perf_counter() - t)
    t = statistics.median(times)
    return {
        "what": "torch",
        "device": dev,
        "precision": args.precision,
        "attn": args.attn,
        "clip": args.clip,
        "batch": args.batch,
        "len": args.len,
        "steps": args.steps,
        "seconds_per_step": t,
        "tokens_per_second": args.batch * args.len / t,
        "max_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else None,
        "max_reserved_mib": torch.cuda.max_memory_reserved() / 2**20 if dev == "cuda" else None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "last_loss": loss,
        "torch": torch.__version__,
        "transformers": T.__version__,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--matmul", action="store_true")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    p.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    p.add_argument("--batch", type=int, default=84)
    p.add_argument("--len", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--intermediate", type=int, default=3072)
    p.add_argument("--vocab", type=int, default=5005)
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clip; 0 turns it off")
    args = p.parse_args()
    print(json.dumps(matmul_rate() if args.matmul else train_steps(args)), flush=True)


if __name__ == "__main__":
    main()
