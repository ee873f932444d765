#!/usr/bin/env python3
"""Writes a random-weight llama GGUF of a chosen size (f16), with the tokenizer of an existing
GGUF (the tiny test model), using only the Python standard library: the GPU machine has no
PyPI. Random weights give gibberish, but real tokens and real compute: enough to measure a relay
at a realistic engine rate.

  gen-model.py --tokenizer-from tiny.gguf --out rand-1b.gguf            # ~1.0 B parameters
  gen-model.py --tokenizer-from tiny.gguf --out small.gguf --embd 256 --layers 2 --ff 512
"""
import argparse
import os
import random
import struct

ALIGN = 32
F32, F16 = 0, 1
# GGUF value types
U8, I8, U16, I16, U32, I32, F32V, BOOL, STR, ARR, U64, I64, F64 = range(13)
SIZES = {U8: 1, I8: 1, U16: 2, I16: 2, U32: 4, I32: 4, F32V: 4, BOOL: 1, U64: 8, I64: 8, F64: 8}


def read_value(f, t):
    """Returns the raw bytes of one value of type t read from f."""
    if t in SIZES:
        return f.read(SIZES[t])
    if t == STR:
        n = f.read(8)
        return n + f.read(struct.unpack("<Q", n)[0])
    if t == ARR:
        head = f.read(12)
        et, count = struct.unpack("<IQ", head)
        return head + b"".join(read_value(f, et) for _ in range(count))
    raise ValueError(f"unknown GGUF value type {t}")


def tokenizer_kvs(path):
    """The `tokenizer.*` key/value pairs of a GGUF, raw, plus its vocabulary size."""
    out = []
    vocab = None
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise SystemExit(f"{path} is not a GGUF file")
        _version, _tensors, kvs = struct.unpack("<IQQ", f.read(20))
        for _ in range(kvs):
            (n,) = struct.unpack("<Q", f.read(8))
            key = f.read(n).decode()
            (t,) = struct.unpack("<I", f.read(4))
            raw = read_value(f, t)
            if key.startswith("tokenizer."):
                out.append((key, t, raw))
                if key == "tokenizer.ggml.tokens":
                    vocab = struct.unpack("<Q", raw[4:12])[0]
    if vocab is None:
        raise SystemExit(f"{path} has no tokenizer.ggml.tokens")
    return out, vocab


def s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, t, raw):
    return s(key) + struct.pack("<I", t) + raw


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokenizer-from", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--embd", type=int, default=2048)
    p.add_argument("--layers", type=int, default=18)
    p.add_argument("--ff", type=int, default=5632)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--ctx", type=int, default=8192)
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args()
    tok, vocab = tokenizer_kvs(a.tokenizer_from)
    e, ff, L = a.embd, a.ff, a.layers
    head_dim = e // a.heads
    u32 = lambda v: struct.pack("<I", v)
    f32 = lambda v: struct.pack("<f", v)
    kvs = [
        kv("general.architecture", STR, s("llama")),
        kv("general.name", STR, s(f"random-llama-{e}x{L}")),
        kv("general.file_type", U32, u32(1)),
        kv("llama.context_length", U32, u32(a.ctx)),
        kv("llama.embedding_length", U32, u32(e)),
        kv("llama.block_count", U32, u32(L)),
        kv("llama.feed_forward_length", U32, u32(ff)),
        kv("llama.attention.head_count", U32, u32(a.heads)),
        kv("llama.attention.head_count_kv", U32, u32(a.heads)),
        kv("llama.attention.layer_norm_rms_epsilon", F32V, f32(1e-5)),
        kv("llama.rope.dimension_count", U32, u32(head_dim)),
        kv("llama.rope.freq_base", F32V, f32(10000.0)),
        kv("llama.vocab_size", U32, u32(vocab)),
    ] + [kv(k, t, raw) for k, t, raw in tok]
    # (name, dims ne0..., type); the output matrix is tied to token_embd.
    tensors = [("token_embd.weight", [e, vocab], F16), ("output_norm.weight", [e], F32)]
    for i in range(L):
        b = f"blk.{i}."
        tensors += [
            (b + "attn_norm.weight", [e], F32),
            (b + "attn_q.weight", [e, e], F16),
            (b + "attn_k.weight", [e, e], F16),
            (b + "attn_v.weight", [e, e], F16),
            (b + "attn_output.weight", [e, e], F16),
            (b + "ffn_norm.weight", [e], F32),
            (b + "ffn_gate.weight", [e, ff], F16),
            (b + "ffn_up.weight", [e, ff], F16),
            (b + "ffn_down.weight", [ff, e], F16),
        ]
    infos, offset, sizes = [], 0, []
    for name, dims, t in tensors:
        n = 1
        for d in dims:
            n *= d
        size = n * (2 if t == F16 else 4)
        infos.append(s(name) + u32(len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + u32(t) + struct.pack("<Q", offset))
        sizes.append(size)
        offset += (size + ALIGN - 1) // ALIGN * ALIGN
    params = sum(sz // (2 if t == F16 else 4) for sz, (_, _, t) in zip(sizes, tensors))
    rng = random.Random(a.seed)
    # A block of N(0, 0.02) halves, repeated with a rotating start: random enough for timing.
    block = struct.pack(f"<{65536}e", *(rng.gauss(0.0, 0.02) for _ in range(65536)))
    ones = struct.pack("<f", 1.0) * 65536
    tmp = a.out + ".part"
    with open(tmp, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)))
        f.write(b"".join(kvs))
        f.write(b"".join(infos))
        f.write(b"\0" * ((-f.tell()) % ALIGN))
        for k, ((name, dims, t), size) in enumerate(zip(tensors, sizes)):
            src = block if t == F16 else ones
            start = (k * 4099 * 2) % len(src) if t == F16 else 0
            left = size
            while left > 0:
                chunk = (src[start:] + src[:start])[: min(left, len(src))]
                f.write(chunk)
                left -= len(chunk)
            f.write(b"\0" * ((-size) % ALIGN))
    os.replace(tmp, a.out)
    print(f"{a.out}: {params / 1e9:.2f} B parameters, {os.path.getsize(a.out) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
