#!/usr/bin/env python3
"""Write a tiny llama-architecture GGUF model with seeded random weights.

Used by `cargo xtask provision-engine` / `cargo xtask gen-model` to give tests
a real model that a CPU-only llama-server loads in well under a second. The
text it produces is gibberish, but tokens, timings and seed-determinism are
real. Same seed (and same numpy/gguf versions) -> byte-identical file.

Usage: gen_tiny_model.py --vocab VOCAB.gguf --out OUT.gguf [--seed N]
"""

import argparse
import os
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter

N_LAYER = 2
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 4
N_FF = 128
# Long enough that a test can hold a slot busy for seconds with a large max_tokens.
N_CTX = 32768
HEAD_DIM = N_EMBD // N_HEAD
RMS_EPS = 1e-5
ROPE_FREQ_BASE = 10000.0


def copy_tokenizer(reader: GGUFReader, writer: GGUFWriter) -> int:
    """Copy every `tokenizer.*` KV pair, in file order, from the vocab-only file."""
    n_vocab = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub_type = field.types[1] if vtype == GGUFValueType.ARRAY else None
        value = field.contents()
        writer.add_key_value(key, value, vtype, sub_type=sub_type)
        if key == "tokenizer.ggml.tokens":
            n_vocab = len(value)
    if n_vocab == 0:
        sys.exit("vocab file has no tokenizer.ggml.tokens")
    return n_vocab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vocab", required=True, help="vocab-only GGUF to copy tokenizer.* from")
    ap.add_argument("--out", required=True, help="output GGUF path (written atomically)")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()

    reader = GGUFReader(args.vocab)
    tmp = f"{args.out}.tmp.{os.getpid()}"
    writer = GGUFWriter(tmp, "llama")

    writer.add_name(f"tiny-llama-s{args.seed}")
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(ROPE_FREQ_BASE)
    writer.add_file_type(0)  # LLAMA_FTYPE_ALL_F32
    n_vocab = copy_tokenizer(reader, writer)
    writer.add_vocab_size(n_vocab)

    rng = np.random.default_rng(args.seed)

    def mat(rows: int, cols: int) -> np.ndarray:
        # numpy shape (rows, cols) becomes GGUF ne = [cols, rows]; scale by
        # fan-in so activations stay O(1) and logits are not all near-ties.
        w = rng.standard_normal((rows, cols), dtype=np.float32)
        return (w / np.float32(np.sqrt(cols))).astype(np.float32)

    ones = np.ones(N_EMBD, dtype=np.float32)
    writer.add_tensor("token_embd.weight", rng.standard_normal((n_vocab, N_EMBD), dtype=np.float32))
    for i in range(N_LAYER):
        p = f"blk.{i}"
        writer.add_tensor(f"{p}.attn_norm.weight", ones.copy())
        writer.add_tensor(f"{p}.attn_q.weight", mat(N_HEAD * HEAD_DIM, N_EMBD))
        writer.add_tensor(f"{p}.attn_k.weight", mat(N_HEAD_KV * HEAD_DIM, N_EMBD))
        writer.add_tensor(f"{p}.attn_v.weight", mat(N_HEAD_KV * HEAD_DIM, N_EMBD))
        writer.add_tensor(f"{p}.attn_output.weight", mat(N_EMBD, N_HEAD * HEAD_DIM))
        writer.add_tensor(f"{p}.ffn_norm.weight", ones.copy())
        writer.add_tensor(f"{p}.ffn_gate.weight", mat(N_FF, N_EMBD))
        writer.add_tensor(f"{p}.ffn_up.weight", mat(N_FF, N_EMBD))
        writer.add_tensor(f"{p}.ffn_down.weight", mat(N_EMBD, N_FF))
    writer.add_tensor("output_norm.weight", ones.copy())
    writer.add_tensor("output.weight", mat(n_vocab, N_EMBD))

    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, args.out)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


if __name__ == "__main__":
    main()
