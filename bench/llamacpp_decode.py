#!/usr/bin/env python3
"""Prompt (prefill) and batch-1 decode speed of llama.cpp (through llama-cpp-python) on a GGUF model,
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
    ap.add_argument("--prompt-file", help="read the prompt from this file (e.g. for a prefill measurement)")
    ap.add_argument("--ctx", type=int, default=2048)
    args = ap.parse_args()
    text = open(args.prompt_file).read() if args.prompt_file else args.prompt
    llm = Llama(model_path=args.model, n_threads=args.threads, n_threads_batch=args.threads,
                n_ctx=args.ctx, n_batch=args.ctx, verbose=False)
    prompt = llm.tokenize(text.encode(), add_bos=True)

    def prefill() -> float:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        return time.perf_counter() - t0

    def run(n: int) -> float:
        llm.reset()
        llm.eval(prompt)
        t0 = time.perf_counter()
        for _ in range(n):
            token = llm.sample(temp=0.0)
            llm.eval([token])
        return time.perf_counter() - t0

    run(4)  # warm-up
    prompt_seconds = min(prefill() for _ in range(3))
    seconds = run(args.tokens)
    size = os.path.getsize(args.model)
    print(json.dumps({"model": args.model, "threads": args.threads, "prompt_tokens": len(prompt),
                      "prompt_seconds": prompt_seconds, "prompt_tokens_per_second": len(prompt) / prompt_seconds,
                      "generated_tokens": args.tokens,
                      "tokens_per_second": args.tokens / seconds, "file_bytes": size,
                      "file_bytes_per_second_gbps": size * args.tokens / seconds / 1e9}))


if __name__ == "__main__":
    main()
