#!/usr/bin/env python3
"""Rewrites a GGUF model with every tensor dequantized to F32 (metadata unchanged), so that
llama.cpp's F32 path can be compared with this library on the same weights.

Not part of the test suite (the prefill comparison needs llama-cpp-python):
    python3 bench/gguf_to_f32.py SmolLM2-135M-Instruct.Q4_1.gguf smollm2-f32.gguf
    python3 bench/llamacpp_decode.py smollm2-f32.gguf --threads 2 --prompt-file TEXT
"""
from __future__ import annotations

import argparse
import os

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    args = ap.parse_args()
    if os.path.exists(args.dst):
        raise SystemExit(f"{args.dst} exists")
    r = GGUFReader(args.src)
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(args.dst + ".tmp", arch)
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name == "general.file_type":
            w.add_uint32(name, 0)  # all F32
            continue
        kind = field.types[0]
        if kind == GGUFValueType.ARRAY:
            w.add_array(name, field.contents())
        else:
            w.add_key_value(name, field.contents(), kind)
    for t in r.tensors:
        data = dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = [int(x) for x in reversed(t.shape.tolist())]  # GGUF lists dims fastest first
        w.add_tensor(t.name, data.reshape(shape), raw_dtype=GGMLQuantizationType.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(args.dst + ".tmp", args.dst)


if __name__ == "__main__":
    main()
