#!/usr/bin/env python3
"""Extracts Jane Austen's six novels from the janeaustenr R package data (Rdata.rdb) into plain text files.

No R needed: an .rdb file is a sequence of entries, each a 4-byte big-endian length (of the inflated data)
and a zlib stream; each stream inflates to an R serialization ("X\\n", version ints, the object). Each novel is a character vector
(STRSXP) of lines. Usage: austen_text.py Rdata.rdb OUT_DIR
"""
import os
import struct
import sys
import zlib

NOVELS = ["emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility"]
STRSXP, CHARSXP = 16, 9


def character_vector(blob):
    if blob[:2] != b"X\n":
        raise ValueError("not an XDR R serialization")
    pos = 2
    version, = struct.unpack(">i", blob[pos:pos + 4])
    pos += 12  # version, writer version, minimal reader version
    if version == 3:
        n, = struct.unpack(">i", blob[pos:pos + 4])
        pos += 4 + n  # native encoding name
    flags, count = struct.unpack(">ii", blob[pos:pos + 8])
    pos += 8
    if flags & 0xFF != STRSXP:
        raise ValueError(f"expected a character vector, got SEXP type {flags & 0xFF}")
    lines = []
    for _ in range(count):
        flags, length = struct.unpack(">ii", blob[pos:pos + 8])
        pos += 8
        if flags & 0xFF != CHARSXP:
            raise ValueError("malformed string element")
        if length < 0:
            lines.append("")
            continue
        lines.append(blob[pos:pos + length].decode("utf-8", errors="replace"))
        pos += length
    return lines


def main(rdb, out_dir):
    data = open(rdb, "rb").read()
    os.makedirs(out_dir, exist_ok=True)
    pos, vectors = 0, []
    while pos + 4 <= len(data) and len(vectors) < len(NOVELS):
        n, = struct.unpack(">I", data[pos:pos + 4])
        stream = zlib.decompressobj()
        blob = stream.decompress(data[pos + 4:])
        if len(blob) != n:
            raise SystemExit(f"corrupt entry at byte {pos}: inflated {len(blob)} bytes, expected {n}")
        pos = len(data) - len(stream.unused_data)
        try:
            vectors.append(character_vector(blob))
        except ValueError:
            continue
    if len(vectors) != len(NOVELS):
        raise SystemExit(f"found {len(vectors)} novels in {rdb}, expected {len(NOVELS)}")
    for name, lines in zip(NOVELS, vectors):
        with open(os.path.join(out_dir, name + ".txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        print(f"{name}: {len(lines)} lines, {sum(len(l.split()) for l in lines)} words")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
