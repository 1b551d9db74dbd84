"""The table of benches/gpu/run.sh's results (one JSON object a line) as Markdown."""

import json
import sys

# The paper's pretraining: 7.9 M promoters, 3 epochs, every sequence padded to 256 tokens.
PAPER_SEQUENCES = 7.9e6 * 3
LAYERS, HIDDEN, INTER, VOCAB = 6, 768, 3072, 5005


def train_flops(batch, length):
    """Model FLOPs of one step, as flora's throughput::train_flops counts them."""
    tokens = batch * length
    per_layer = 2 * tokens * (4 * HIDDEN**2 + 2 * HIDDEN * INTER) + 4 * tokens * length * HIDDEN
    head = 2 * tokens * 0.15 * (HIDDEN**2 + HIDDEN * VOCAB)  # on the masked positions
    return 3 * (LAYERS * per_layer + head)


def main(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    matmul = next((r for r in rows if r.get("what") == "matmul"), None)
    peak = matmul["tflops"] if matmul else float("nan")
    # PyTorch's rate for each precision and sequence length.
    torch_tps = {
        (r["precision"], r["len"]): r["tokens_per_second"]
        for r in rows
        if r.get("what") == "torch" and r.get("attn") == "sdpa"
    }
    print(f"bf16 matrix product ceiling (8192^3, PyTorch): {peak:.0f} TFLOP/s\n")
    print("| run | s/step | tokens/s | vs PyTorch (sdpa), same precision and length | model TFLOP/s | MFU vs bf16 ceiling | GPU MiB | paper pretraining (23.7 M sequences) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if "seconds_per_step" not in r:
            if "failed" in r and r.get("what") != "small":
                print(f"| {r['label']} | failed ({r['failed']}) | | | | | | |")
            continue
        tps = r["tokens_per_second"]
        tflops = train_flops(r["batch"], r["len"]) / r["seconds_per_step"] / 1e12
        prec = str(r.get("precision", "")).lower()
        ref = torch_tps.get((prec, r["len"]))
        ratio = f"{tps / ref:.2f}x" if ref else ""
        hours = PAPER_SEQUENCES * r["len"] / tps / 3600
        print(
            f"| {r['label']} | {r['seconds_per_step']:.4f} | {tps:,.0f} | {ratio} | {tflops:.1f} | "
            f"{100 * tflops / peak:.1f}% | {r.get('gpu_mib', '')} | {hours:.2f} h |"
        )
    runs = [r for r in rows if str(r.get("label", "")).startswith("pretrain ")]
    if runs:
        print("\nSmall pretraining (2 x 64, 4,000 simulated promoters, 2 epochs), CPU against GPU:\n")
        print("| run | where | steps | validation loss | validation accuracy | final training loss | wall s |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for r in runs:
            if "failed" in r:
                print(f"| {r['label']} | {r.get('where', '')} | failed ({r['failed']}) | | | | |")
                continue
            print(
                f"| {r['label']} | {r.get('where', '')} | {r['steps']} | {r['validation_loss']:.4f} | "
                f"{r['validation_accuracy']:.4f} | {r['final_loss']:.4f} | {r['seconds']:.1f} |"
            )

    tuned = [r for r in rows if str(r.get("label", "")).startswith("finetune ")]
    if tuned:
        print("\nFine-tuning the CPU-pretrained model (2 targets, 3 epochs):\n")
        print("| run | where | steps | best validation loss | test Pearson r² | test R² | wall s |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for r in tuned:
            if "failed" in r:
                print(f"| {r['label']} | {r.get('where', '')} | failed ({r['failed']}) | | | | |")
                continue
            print(
                f"| {r['label']} | {r.get('where', '')} | {r['steps']} | {r['best_val_loss']:.4f} | "
                f"{r['test_pearson_r2']:.4f} | {r['test_r2']:.4f} | {r['seconds']:.1f} |"
            )
    for r in rows:
        if str(r.get("label", "")).endswith("cpu vs gpu") and "failed" in r:
            print(f"\n{r['label']}: failed ({r['failed']})")
        if "max_abs_diff" in r:
            print(
                f"\n{r['label']}, {r['sequences']} promoters: largest difference "
                f"{r['max_abs_diff']:.2e} (largest value {r['max_abs_value']:.2f})"
            )


if __name__ == "__main__":
    main(sys.argv[1])
