#!/usr/bin/env python3
"""Generates one DAG of trivial `exec` jobs twice: as a flora workflow and as a Snakefile.

Shapes:
  fanout N     N independent jobs, then one job that reads all of them (fan-out / consume).
  grid D W     D stages of W jobs each; job k of a stage reads job k of the stage before
               (W chains of length D), then one job that reads the last stage.
Usage: gen.py OUTDIR fanout N | gen.py OUTDIR grid D W
"""
import os
import sys


def fanout(n):
    items = [f"i{i}" for i in range(n)]
    flora = (
        "name: bench\n"
        "stages:\n"
        "  make:\n"
        "    kind: exec\n"
        f"    foreach: [{', '.join(items)}]\n"
        "    params: {argv: [sh, -c, \"echo ${item} > $FLORA_OUT/x\"]}\n"
        "  gather:\n"
        "    kind: exec\n"
        "    inputs: {all: make}\n"
        "    params: {argv: [sh, -c, \"cat $FLORA_IN_all/*/x | wc -l > $FLORA_OUT/n\"]}\n"
    )
    smk = (
        f"ITEMS = [f'i{{i}}' for i in range({n})]\n"
        "rule all:\n    input: 'out/gather/n'\n"
        "rule make:\n    output: 'out/make/{item}/x'\n    shell: 'echo {wildcards.item} > {output}'\n"
        "rule gather:\n    input: expand('out/make/{item}/x', item=ITEMS)\n    output: 'out/gather/n'\n"
        "    shell: 'cat {input} | wc -l > {output}'\n"
    )
    return flora, smk, n + 1


def grid(depth, width):
    items = ", ".join(f"i{i}" for i in range(width))
    flora = ["name: bench", "stages:"]
    for d in range(depth):
        flora.append(f"  s{d}:")
        flora.append("    kind: exec")
        flora.append(f"    foreach: [{items}]")
        if d == 0:
            flora.append("    params: {argv: [sh, -c, \"echo ${item} > $FLORA_OUT/x\"]}")
        else:
            flora.append(f"    inputs: {{prev: \"s{d - 1}[${{item}}]\"}}")
            flora.append(f"    params: {{argv: [sh, -c, \"echo {d} | cat $FLORA_IN_prev/x - > $FLORA_OUT/x\"]}}")
    flora.append("  gather:")
    flora.append("    kind: exec")
    flora.append(f"    inputs: {{all: s{depth - 1}}}")
    flora.append("    params: {argv: [sh, -c, \"cat $FLORA_IN_all/*/x | wc -l > $FLORA_OUT/n\"]}")
    smk = [f"ITEMS = [f'i{{i}}' for i in range({width})]",
           "rule all:\n    input: 'out/gather/n'",
           "rule s0:\n    output: 'out/s0/{item}/x'\n    shell: 'echo {wildcards.item} > {output}'"]
    for d in range(1, depth):
        smk.append(f"rule s{d}:\n    input: 'out/s{d - 1}/{{item}}/x'\n    output: 'out/s{d}/{{item}}/x'\n"
                   f"    shell: 'echo {d} | cat {{input}} - > {{output}}'")
    smk.append(f"rule gather:\n    input: expand('out/s{depth - 1}/{{item}}/x', item=ITEMS)\n"
               "    output: 'out/gather/n'\n    shell: 'cat {input} | wc -l > {output}'")
    return "\n".join(flora) + "\n", "\n".join(smk) + "\n", depth * width + 1


def main():
    out, shape, *sizes = sys.argv[1:]
    os.makedirs(out, exist_ok=True)
    flora, smk, jobs = fanout(int(sizes[0])) if shape == "fanout" else grid(int(sizes[0]), int(sizes[1]))
    with open(os.path.join(out, "bench.yaml"), "w") as f:
        f.write(flora)
    with open(os.path.join(out, "Snakefile"), "w") as f:
        f.write(smk)
    print(jobs)


if __name__ == "__main__":
    main()
