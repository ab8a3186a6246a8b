#!/usr/bin/env python3
"""How often llama.cpp agrees with its own golden file: the top-1 token after every position of the passages
in tests/golden/passage_top1.txt, recomputed by llama.cpp on this machine under the golden file's settings and
under settings an engine might differ in (flash attention, float K/V, one thread, small batches), each
against the golden file and against this machine's run with the golden file's settings. Where the golden
file was written on a machine with another SIMD path, llama.cpp's sums run in another order there, the same
kind of difference as kvevict's engine has from llama.cpp. Run it through scripts/llama_self_agreement.sh.

    llama_self_agreement.py MODEL.gguf tests/golden/passage_top1.txt
"""
import sys

import numpy as np
from llama_cpp import Llama

GGML_TYPE_F32 = 0
SETTINGS = [  # (name, arguments beyond make_golden.py's)
    ("the golden file's settings", {}),
    ("flash attention", {"flash_attn": True}),
    ("K/V as f32", {"type_k": GGML_TYPE_F32, "type_v": GGML_TYPE_F32}),
    ("1 thread", {"n_threads": 1}),
    ("batches of 32", {"n_batch": 32, "n_ubatch": 32}),
]


def passages(path):
    lines = open(path).read().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("passage "):
            fields = {l.split()[0]: l.split()[1:] for l in lines[i + 1:i + 5]}
            yield line[8:], [int(x) for x in fields["ids"]], [int(x) for x in fields["top1"]], \
                [float(x) for x in fields["lead"]]


def main(model_path, golden):
    names = [name for name, *_ in passages(golden)]
    print("| llama.cpp on this machine | " + " | ".join(f"{n}: against the file | {n}: against this machine"
                                                    for n in names) + " |")
    print("|---|" + "---|---|" * len(names))
    here = {}  # passage -> top-1 under the golden file's settings on this machine
    for setting, extra in SETTINGS:
        llm = Llama(model_path, **{"n_ctx": 2048, "n_threads": 2, "logits_all": True, "verbose": False,
                                   "seed": 0, **extra})
        cells = []
        for name, ids, top1, lead in passages(golden):
            llm.reset()
            llm.eval(ids)
            mine = np.array(llm.scores[:len(ids)]).argmax(axis=1)
            here.setdefault(name, mine)
            missed = [lead[i] for i in range(len(ids)) if mine[i] != top1[i]]
            agree = len(ids) - len(missed)
            cells.append(f"{agree} of {len(ids)} ({100 * agree / len(ids):.1f}%), "
                         f"largest lead missed {max(missed, default=0):.3f}")
            same = int((mine == here[name]).sum())
            cells.append(f"{same} of {len(ids)} ({100 * same / len(ids):.1f}%)")
        print(f"| {setting} | " + " | ".join(cells) + " |", flush=True)
        del llm


if __name__ == "__main__":
    main(*sys.argv[1:3])
