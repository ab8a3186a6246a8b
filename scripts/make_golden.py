#!/usr/bin/env python3
"""Writes the golden files the engine is tested against, from llama.cpp (the llama-cpp-python binding) on
the same GGUF file: token ids of Austen passages, next-token logits of prompts, the top-1 token at every
position of a passage, and llama.cpp's decode speed. Run it through scripts/make_golden.sh, which sets up
the Python environment; the outputs are small text files under tests/golden/.

    make_golden.py MODEL.gguf AUSTEN_DIR OUT_DIR
"""
import sys
import time

import numpy as np
from llama_cpp import Llama

PASSAGES = [  # (novel, first character, length): tokenizer checks, several kinds of text
    ("prideprejudice", 0, 3000),
    ("emma", 20000, 3000),
    ("northangerabbey", 50000, 3000),
    ("mansfieldpark", 120000, 3000),
    ("sensesensibility", 300000, 3000),
    ("persuasion", 1000, 1500),  # has dates and digits
]
PROMPTS = [
    "The capital of France is",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be",
    "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition,",
    "One, two, three, four,",
    "def fibonacci(n):\n    if n < 2:\n        return",
    "Mr. Darcy looked at Elizabeth and",
    "The year 1811 was",
    "Water boils at a temperature of",
]
TOP = 20
PASSAGES_TOP1 = [("emma", 5000, 256), ("persuasion", 60000, 512)]  # passages whose every next token is recorded


def main(model_path, austen, out):
    llm = Llama(model_path, n_ctx=2048, n_threads=2, logits_all=True, verbose=False, seed=0)

    def text(novel, start, length):
        return open(f"{austen}/{novel}.txt", encoding="utf-8").read()[start:start + length]

    with open(f"{out}/tokens.txt", "w") as f:
        f.write("# novel first_char length : token ids from llama.cpp (add_bos=False)\n")
        for novel, start, length in PASSAGES:
            ids = llm.tokenize(text(novel, start, length).encode("utf-8"), add_bos=False, special=False)
            f.write(f"{novel} {start} {length} : {' '.join(map(str, ids))}\n")

    with open(f"{out}/logits.txt", "w") as f:
        f.write(f"# per prompt: the prompt (escaped), its token ids, llama.cpp's top {TOP} next-token (id, logit)\n")
        for prompt in PROMPTS:
            ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=False)
            llm.reset()
            llm.eval(ids)
            logits = np.array(llm.scores[len(ids) - 1], dtype=np.float64)
            top = np.argsort(-logits)[:TOP]
            f.write("prompt " + prompt.encode("unicode_escape").decode("ascii") + "\n")
            f.write("ids " + " ".join(map(str, ids)) + "\n")
            f.write("top " + " ".join(f"{i}:{logits[i]:.5f}" for i in top) + "\n")

    # Per position of each passage: llama.cpp's argmax, its lead over the runner-up (logits), and the NLL of
    # the token that follows (for perplexity).
    with open(f"{out}/passage_top1.txt", "w") as f:
        f.write("# per passage (novel, first character, tokens): token ids, then after each token llama.cpp's argmax,\n"
                "# its lead over the second logit, and -log p of the next token\n")
        for novel, start, n in PASSAGES_TOP1:
            ids = llm.tokenize(text(novel, start, 8 * n).encode("utf-8"), add_bos=False, special=False)[:n]
            assert len(ids) == n
            llm.reset()
            llm.eval(ids)
            scores = np.array(llm.scores[:n], dtype=np.float64)
            top2 = np.sort(scores, axis=1)[:, -2:]
            lse = scores.max(axis=1) + np.log(np.exp(scores - scores.max(axis=1, keepdims=True)).sum(axis=1))
            nll = [lse[i] - scores[i, ids[i + 1]] for i in range(n - 1)]
            f.write(f"passage {novel} {start} {n}\n")
            f.write("ids " + " ".join(map(str, ids)) + "\n")
            f.write("top1 " + " ".join(str(int(np.argmax(scores[i]))) for i in range(n)) + "\n")
            f.write("lead " + " ".join(f"{top2[i, 1] - top2[i, 0]:.4f}" for i in range(n)) + "\n")
            f.write("nll " + " ".join(f"{x:.5f}" for x in nll) + "\n")

    # Decode speed, one token at a time after a short prompt, 2 threads (as the engine's figures).
    ids = llm.tokenize(text("emma", 5000, 4000).encode("utf-8"), add_bos=False, special=False)
    llm.reset()
    llm.eval(ids[:16])
    steps = 128
    t0 = time.perf_counter()
    for i in range(steps):
        llm.eval([ids[16 + i]])
    dt = time.perf_counter() - t0
    print(f"llama.cpp decode: {steps / dt:.1f} tokens/s (n_threads=2, logits_all=True)")


if __name__ == "__main__":
    main(*sys.argv[1:4])
