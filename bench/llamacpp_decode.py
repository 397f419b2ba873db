#!/usr/bin/env python3
"""Batch-1 decode speed of llama.cpp (through llama-cpp-python) on a GGUF model,
for a side-by-side run with `moeupcycle bench decode` on the same file.

Not part of the test suite (llama-cpp-python compiles llama.cpp, ~8 minutes):
    pip install llama-cpp-python
    python3 bench/llamacpp_decode.py MODEL.gguf --threads 2 --tokens 64
"""
import argparse
import json
import os
import time

from llama_cpp import Llama


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt", default="The capital of France is")
    args = ap.parse_args()
    llm = Llama(model_path=args.model, n_threads=args.threads, n_threads_batch=args.threads,
                n_ctx=512, verbose=False)
    prompt = llm.tokenize(args.prompt.encode(), add_bos=True)

    def run(n: int) -> float:
        llm.reset()
        llm.eval(prompt)
        t0 = time.perf_counter()
        for _ in range(n):
            token = llm.sample(temp=0.0)
            llm.eval([token])
        return time.perf_counter() - t0

    run(4)  # warm-up
    seconds = run(args.tokens)
    size = os.path.getsize(args.model)
    print(json.dumps({"model": args.model, "threads": args.threads, "generated_tokens": args.tokens,
                      "tokens_per_second": args.tokens / seconds, "file_bytes": size,
                      "file_bytes_per_second_gbps": size * args.tokens / seconds / 1e9}))


if __name__ == "__main__":
    main()
