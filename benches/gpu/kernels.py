#!/usr/bin/env python3
"""Each step's time by kernel, from benches/gpu/kernels.sh's ncu tables.

    python3 benches/gpu/kernels.py DIR [TOP]

DIR holds flora-kernels.csv and torch-kernels.csv. flora's last step is the kernels after the
last lamb_apply but one; PyTorch's from the last step's embedding gathers. Prints, for each, the
kernels summed by name, largest first.
"""
import collections
import csv
import os
import sys


def load(path):
    rows = list(csv.reader(open(path)))
    start = next(i for i, r in enumerate(rows) if r and r[0] == "ID")
    header = rows[start]
    name, time = header.index("Kernel Name"), header.index("gpu__time_duration.sum")
    # The row after the header gives the units (ns).
    return [(r[name], float(r[time].replace(",", "")) / 1e3) for r in rows[start + 2:] if len(r) == len(header)]


def last_step(kernels, is_flora):
    names = [n for n, _ in kernels]
    if is_flora:
        ends = [i for i, n in enumerate(names) if n.startswith("lamb_apply")]
        return kernels[ends[-2] + 1:ends[-1] + 1] if len(ends) >= 2 else kernels
    gathers = [i for i, n in enumerate(names) if "vectorized_gather" in n]
    return kernels[gathers[len(gathers) // 2]:] if gathers else kernels


def main():
    folder = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    for who in ("flora", "torch"):
        path = os.path.join(folder, f"{who}-kernels.csv")
        if not os.path.exists(path):
            continue
        step = last_step(load(path), who == "flora")
        total = sum(us for _, us in step)
        print(f"== {who}: {len(step)} kernels, {total / 1e3:.2f} ms")
        sums = collections.defaultdict(lambda: [0, 0.0])
        for n, us in step:
            sums[n[:100]][0] += 1
            sums[n[:100]][1] += us
        for n, (count, us) in sorted(sums.items(), key=lambda kv: -kv[1][1])[:top]:
            print(f"{us / 1e3:8.3f} ms {count:4d} x {us / count:7.1f} us  {n}")


if __name__ == "__main__":
    main()
