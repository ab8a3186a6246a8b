#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/*): a tiny but complete llama GGUF model
with a byte-level BPE vocabulary for the GGUF target, texts for the tokenizer, op scripts for the cache.
Deterministic: running it again rewrites the same bytes."""
import os
import random
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def gguf_string(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def kv(key, value):
    if isinstance(value, str):
        return gguf_string(key) + struct.pack("<I", 8) + gguf_string(value)
    if isinstance(value, float):
        return gguf_string(key) + struct.pack("<If", 6, value)
    if isinstance(value, list):
        return gguf_string(key) + struct.pack("<IIQ", 9, 8, len(value)) + b"".join(gguf_string(v) for v in value)
    return gguf_string(key) + struct.pack("<II", 4, value)


def byte_symbols():
    """GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest for 256 + n."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return [table[b] for b in range(256)]


def f16(x):
    return struct.pack("<e", x)


def q8_0(rows, cols, rng):
    out = b""
    for _ in range(rows * cols // 32):
        out += f16(0.01) + bytes(rng.randrange(256) for _ in range(32))
    return out


def q4_1(rows, cols, rng):
    out = b""
    for _ in range(rows * cols // 32):
        out += f16(0.02) + f16(-0.15) + bytes(rng.randrange(256) for _ in range(16))
    return out


def f32(n, rng):
    return b"".join(struct.pack("<f", 1.0 + 0.1 * rng.random()) for _ in range(n))


def tiny_model(rng):
    n_embd, n_heads, n_kv, n_ff = 32, 2, 1, 32
    head_dim = n_embd // n_heads
    symbols = byte_symbols()
    tokens = symbols + ["th", "the", "\u0120the", "in"]
    merges = ["t h", "th e", "\u0120 the", "i n"]
    meta = [
        kv("general.architecture", "llama"),
        kv("general.alignment", 32),
        kv("llama.block_count", 1),
        kv("llama.embedding_length", n_embd),
        kv("llama.attention.head_count", n_heads),
        kv("llama.attention.head_count_kv", n_kv),
        kv("llama.feed_forward_length", n_ff),
        kv("llama.attention.layer_norm_rms_epsilon", 1e-5),
        kv("llama.rope.freq_base", 10000.0),
        kv("llama.rope.dimension_count", head_dim),
        kv("tokenizer.ggml.model", "gpt2"),
        kv("tokenizer.ggml.tokens", tokens),
        kv("tokenizer.ggml.merges", merges),
    ]
    # (name, dims fastest first, ggml type, bytes)
    tensors = [("token_embd.weight", [n_embd, len(tokens)], 8, q8_0(len(tokens), n_embd, rng)),
               ("output_norm.weight", [n_embd], 0, f32(n_embd, rng)),
               ("blk.0.attn_norm.weight", [n_embd], 0, f32(n_embd, rng)),
               ("blk.0.ffn_norm.weight", [n_embd], 0, f32(n_embd, rng)),
               ("blk.0.attn_q.weight", [n_embd, n_embd], 3, q4_1(n_embd, n_embd, rng)),
               ("blk.0.attn_k.weight", [n_embd, n_kv * head_dim], 3, q4_1(n_kv * head_dim, n_embd, rng)),
               ("blk.0.attn_v.weight", [n_embd, n_kv * head_dim], 3, q4_1(n_kv * head_dim, n_embd, rng)),
               ("blk.0.attn_output.weight", [n_embd, n_embd], 3, q4_1(n_embd, n_embd, rng)),
               ("blk.0.ffn_gate.weight", [n_embd, n_ff], 3, q4_1(n_ff, n_embd, rng)),
               ("blk.0.ffn_up.weight", [n_embd, n_ff], 3, q4_1(n_ff, n_embd, rng)),
               ("blk.0.ffn_down.weight", [n_ff, n_embd], 3, q4_1(n_embd, n_ff, rng))]
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta)) + b"".join(meta)
    data, infos = b"", b""
    for name, dims, ggml_type, payload in tensors:
        infos += gguf_string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", ggml_type, len(data))
        data += payload + b"\0" * (-len(payload) % 32)
    head = header + infos
    return head + b"\0" * (-len(head) % 32) + data


def write(folder, name, payload):
    path = os.path.join(HERE, "corpus", folder, name)
    with open(path, "wb") as f:
        f.write(payload)


def main():
    rng = random.Random(2026)
    model = tiny_model(rng)
    write("gguf", "tiny_model.gguf", model)
    write("gguf", "metadata_only.gguf", b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv("general.architecture", "llama"))
    texts = {
        "austen.txt": "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
                      "must be in want of a wife.\n\n\"My dear Mr. Bennet,\" said his lady to him one day, "
                      "\"have you heard that Netherfield Park is let at last?\"",
        "digits_and_contractions.txt": "In 1811 they'd 12,345 pounds; it's 3.14159 and we'll see 2024-11-23.",
        "unicode.txt": "caf\u00e9 na\u00efve \u00c6sop \u0391\u03b8\u03ae\u03bd\u03b1 \u041c\u043e\u0441\u043a\u0432\u0430 "
                       "\u6771\u4eac \ud55c\uad6d \U0001F600 \u2014 \u201cquoted\u201d\u00a0nbsp",
        "whitespace.txt": "a  b\t\tc\n\n\n   d \u3000 e\r\nf",
    }
    for name, text in texts.items():
        write("tokenizer", name, text.encode("utf-8"))
    write("tokenizer", "invalid_utf8.txt", b"x\xc3A \xe2\x82 \xed\xa0\x80 \xf0\x82\x82\xac \x80\x80 \xc3\xa9 end")
    write("tokenizer", "long_run.txt", b"-" * 3000 + b"a" * 3000)
    for seed in range(4):
        r = random.Random(seed)
        write("cache", "ops_%d.bin" % seed, bytes(r.randrange(256) for _ in range(512)))


if __name__ == "__main__":
    main()
