"""config.json files the library writes, read back by their consumer: transformers'
AutoConfig (strictly typed configs) in offline mode.

Every key of a written config that is a field of the config class must match the
field's annotation, and every field whose annotation admits a float must be a JSON
float in the file (transformers refuses an int where it wants a float). Values a
config carries from its source config (or from GGUF metadata) must be the source's.
"""
import dataclasses
import json
import os
import subprocess
import types
import typing
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
from transformers import AutoConfig  # noqa: E402  (the environment above must be set first)

from gguf_models import write_llama_gguf  # noqa: E402
from models import CLI, dense_weights, write_hf  # noqa: E402
from test_smollm2 import smollm2  # noqa: E402,F401  (the real checkpoint, a module fixture)

HEADS, KV_HEADS = 4, 2


def cli(*args):
    p = subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True)
    assert p.returncode == 0, f"moeupcycle {' '.join(map(str, args))}: {p.stderr}"
    return p


# --------------------------------------------------------------------------- annotations


class _TorchDType:
    """Stands in for torch.dtype in annotations (torch is not installed); no JSON value is one."""


def field_types(cls) -> dict:
    """The config class's dataclass fields and their resolved annotations."""
    hints = typing.get_type_hints(cls, localns={"torch": types.SimpleNamespace(dtype=_TorchDType)})
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def is_union(ann) -> bool:
    return typing.get_origin(ann) in (typing.Union, types.UnionType)


def admits_float(ann) -> bool:
    return ann is float or (is_union(ann) and float in typing.get_args(ann))


def check_value(value, ann, where: str):
    """Asserts that a JSON value matches a type annotation; a value of a field that admits a
    float must be a float (a JSON number written with '.' or an exponent)."""
    if ann is typing.Any:
        return
    if is_union(ann):
        members = typing.get_args(ann)
        if value is not None and float in members:
            assert isinstance(value, float), f"{where}: {value!r} must be a JSON float ({ann})"
            return
        # A dict is checked against a TypedDict member when there is one (not just `dict`).
        typed = [m for m in members if typing.is_typeddict(m)]
        if isinstance(value, dict) and typed:
            check_value(value, typed[0], where)
            return
        problems = []
        for m in members:
            try:
                check_value(value, m, where)
                return
            except AssertionError as e:
                problems.append(str(e))
        raise AssertionError(f"{where}: {value!r} matches no member of {ann}: {problems}")
    if ann is type(None):
        assert value is None, f"{where}: {value!r} is not null"
        return
    if ann is float:
        assert isinstance(value, float), f"{where}: {value!r} must be a JSON float"
        return
    if ann is int:
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {value!r} is not an int"
        return
    if ann in (bool, str, dict, list):
        assert isinstance(value, ann), f"{where}: {value!r} is not a {ann.__name__}"
        return
    if typing.is_typeddict(ann):
        assert isinstance(value, dict), f"{where}: {value!r} is not an object"
        hints = typing.get_type_hints(ann)
        for k, v in value.items():
            assert k in hints, f"{where}: key {k!r} is not one of {sorted(hints)}"
            check_value(v, hints[k], f"{where}.{k}")
        return
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Literal:
        assert value in args, f"{where}: {value!r} is not one of {args}"
    elif origin is list:
        assert isinstance(value, list), f"{where}: {value!r} is not a list"
        for i, v in enumerate(value):
            check_value(v, args[0], f"{where}[{i}]")
    elif origin is dict:
        assert isinstance(value, dict), f"{where}: {value!r} is not an object"
        for k, v in value.items():
            check_value(v, args[1], f"{where}.{k}")
    else:
        raise AssertionError(f"{where}: {value!r} cannot be a {ann}")


def test_checker_catches_what_transformers_refuses():
    """The checker itself: ints where floats are wanted, wrong kinds, unknown RoPE keys."""
    fields = field_types(AutoConfig.for_model("mixtral").__class__)
    check_value(0.0, fields["router_jitter_noise"], "f")
    check_value(0.0, fields["attention_dropout"], "f")
    check_value({"rope_type": "default", "rope_theta": 1e4}, fields["rope_parameters"], "f")
    check_value(None, fields["sliding_window"], "f")
    check_value([2, 3], fields["eos_token_id"], "f")
    for value, name in [(0, "router_jitter_noise"), (0, "attention_dropout"), (True, "num_local_experts"),
                        ("x", "sliding_window"), ({"rope_type": "default", "rope_theta": 10000}, "rope_parameters"),
                        ({"type": "linear", "factor": 2.0}, "rope_parameters"), ([2.0], "eos_token_id")]:
        with pytest.raises(AssertionError):
            check_value(value, fields[name], name)


# --------------------------------------------------------------------------- checking a written config


def load_checked(path: Path, model_type: str):
    """Loads path/config.json with AutoConfig and checks every field against its annotation;
    returns (the raw JSON, the loaded config)."""
    raw = json.loads((path / "config.json").read_text())
    config = AutoConfig.from_pretrained(str(path.resolve()))
    assert config.model_type == model_type and raw["model_type"] == model_type
    fields = field_types(type(config))
    checked = 0
    for key, value in raw.items():
        if key in fields:
            check_value(value, fields[key], key)
            checked += 1
    # Every float-typed field written is a float; the loader read what the file says.
    for key, ann in fields.items():
        if key in raw and admits_float(ann) and raw[key] is not None:
            assert isinstance(raw[key], float) and getattr(config, key) == raw[key], key
    for key in ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "max_position_embeddings", "rms_norm_eps", "initializer_range", "tie_word_embeddings"]:
        assert getattr(config, key) == raw[key], key
    assert checked >= 15, f"only {checked} keys of {path / 'config.json'} are fields of {type(config).__name__}"
    # Both dtype spellings (transformers 4: torch_dtype; 5: dtype), the same value.
    assert raw["dtype"] == raw["torch_dtype"] and raw["dtype"] in ("float32", "bfloat16", "float16")
    assert str(config.dtype).removeprefix("torch.") == raw["dtype"]
    # RoPE for both: rope_theta (4) and rope_parameters (5), agreeing; what transformers 5 uses.
    assert isinstance(raw["rope_theta"], float)
    assert raw["rope_parameters"]["rope_theta"] == raw["rope_theta"]
    assert config.rope_parameters["rope_theta"] == raw["rope_theta"]
    assert config.rope_parameters["rope_type"] == raw["rope_parameters"]["rope_type"]
    return raw, config


# --------------------------------------------------------------------------- sources


def hf_source(path: Path, *, arch="llama", qkv_bias=False, **config_changes) -> Path:
    """A tiny dense HF checkpoint whose config.json gets `config_changes` (as a person or an
    older tool might write them, ints included)."""
    weights = dense_weights(np.random.default_rng(3), heads=HEADS, kv_heads=KV_HEADS, qkv_bias=qkv_bias)
    write_hf(path, weights, arch=arch, heads=HEADS, kv_heads=KV_HEADS)
    config = json.loads((path / "config.json").read_text())
    config.update(config_changes)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


# Values an HF source writes that the output must carry exactly (ints included where the
# source wrote ints for fields that are ints).
CARRIED = {"rms_norm_eps": 1e-06, "rope_theta": 500000.0, "initializer_range": 0.01,
           "max_position_embeddings": 300, "bos_token_id": 5, "eos_token_id": 7}


@pytest.fixture(scope="module")
def llama_src(tmp_path_factory):
    return hf_source(tmp_path_factory.mktemp("src") / "llama", **CARRIED, attention_dropout=0)


@pytest.fixture(scope="module")
def gguf_src(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "tiny.gguf"
    weights = dense_weights(np.random.default_rng(4), heads=HEADS, kv_heads=KV_HEADS)
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "t", "1", "2"]
    tokens += [f"t{i}" for i in range(96 - len(tokens))]
    write_llama_gguf(path, weights, heads=HEADS, kv_heads=KV_HEADS, qtype="F32", rope_theta=250000.0,
                     tokens=tokens, merges=["t 1", "t 2"])
    return path


def expect_carried(raw, source: dict):
    for key, value in source.items():
        assert raw[key] == value and type(raw[key]) is type(value), (key, raw[key], value)


# --------------------------------------------------------------------------- upcycled


@pytest.mark.parametrize("method", ["copy", "drop"])
def test_upcycled_mixtral_from_hf(llama_src, tmp_path, method):
    out = tmp_path / "moe"
    cli("upcycle", llama_src, out, "--experts", 4, "--top-k", 2, "--method", method, "--dtype", "bf16")
    raw, config = load_checked(out, "mixtral")
    expect_carried(raw, CARRIED)
    assert raw["attention_dropout"] == 0.0 and isinstance(raw["attention_dropout"], float)
    assert raw["router_jitter_noise"] == 0.0 and raw["dtype"] == "bfloat16"
    assert config.num_local_experts == 4 and config.num_experts_per_tok == 2
    assert raw["rope_parameters"] == {"rope_type": "default", "rope_theta": 500000.0}
    assert raw["moeupcycle"]["method"] == method and raw["moeupcycle"]["num_experts"] == 4


@pytest.mark.parametrize("layers", [None, "1"])
def test_upcycled_qwen2_moe_from_hf_with_biases(tmp_path, layers):
    src = hf_source(tmp_path / "qwen2", arch="qwen2", qkv_bias=True, **CARRIED, sliding_window=None,
                    use_sliding_window=False, max_window_layers=2)
    out = tmp_path / "moe"
    extra = ["--layers", layers] if layers else []
    cli("upcycle", src, out, "--format", "qwen2-moe", "--experts", 4, "--top-k", 2, *extra)
    raw, config = load_checked(out, "qwen2_moe")
    expect_carried(raw, CARRIED)
    assert config.mlp_only_layers == ([0] if layers else []) and config.qkv_bias is True
    assert config.shared_expert_intermediate_size == 64 and raw["dtype"] == "float32"


def test_upcycled_mixtral_from_mistral_keeps_window_and_rope_scaling(tmp_path):
    """sliding_window and rope_scaling (an int factor, as some configs write it) are carried;
    rope_parameters holds the scaling for transformers 5 with float factors."""
    src = hf_source(tmp_path / "mistral", arch="mistral", sliding_window=128,
                    rope_scaling={"rope_type": "linear", "factor": 2})
    out = tmp_path / "moe"
    cli("upcycle", src, out, "--experts", 2, "--top-k", 1)
    raw, config = load_checked(out, "mixtral")
    assert raw["sliding_window"] == 128 and config.sliding_window == 128
    assert raw["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
    assert isinstance(raw["rope_scaling"]["factor"], float)
    assert raw["rope_parameters"] == {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}
    assert config.rope_parameters["rope_type"] == "linear" and config.rope_parameters["factor"] == 2.0


@pytest.mark.parametrize("fmt", ["mixtral", "qwen2-moe"])
def test_upcycled_from_gguf(gguf_src, tmp_path, fmt):
    out = tmp_path / "moe"
    cli("upcycle", gguf_src, out, "--format", fmt, "--experts", 4, "--top-k", 2, "--layers", "all")
    raw, _ = load_checked(out, fmt.replace("-", "_"))
    # GGUF stores eps and the RoPE base as f32: written as the shortest decimal of that f32.
    assert raw["rms_norm_eps"] == 1e-05 and raw["rope_theta"] == 250000.0
    assert "1e-05" in (out / "config.json").read_text()
    assert raw["max_position_embeddings"] == 256 and raw["bos_token_id"] == 1 and raw["eos_token_id"] == 2


@pytest.mark.parametrize("fmt,layers", [("mixtral", "all"), ("qwen2-moe", "0,29")])
def test_upcycled_smollm2(smollm2, tmp_path, fmt, layers):  # noqa: F811
    out = tmp_path / "moe"
    cli("upcycle", smollm2, out, "--format", fmt, "--experts", 2, "--top-k", 1, "--layers", layers,
        "--dtype", "bf16")
    raw, config = load_checked(out, fmt.replace("-", "_"))
    assert raw["rms_norm_eps"] == 1e-05 and raw["rope_theta"] == 100000.0
    assert (config.hidden_size, config.num_hidden_layers, config.num_key_value_heads) == (576, 30, 3)
    assert raw["tie_word_embeddings"] is True and raw["dtype"] == "bfloat16"


# --------------------------------------------------------------------------- saved by training


def train(src, out: Path, tmp_path: Path):
    ids = tmp_path / "ids.txt"
    ids.write_text(" ".join(str(i % 90) for i in range(64)))
    cli("train", src, "--data", ids, "--ids", "--out", out, "--steps", 1, "--batch", 1, "--seq-len", 8,
        "--eval-fraction", 0)
    return out


def test_trained_llama_from_hf(llama_src, tmp_path):
    raw, _ = load_checked(train(llama_src, tmp_path / "out", tmp_path), "llama")
    expect_carried(raw, CARRIED)
    assert raw["attention_dropout"] == 0.0 and isinstance(raw["attention_dropout"], float)


def test_trained_qwen2_with_biases(tmp_path):
    src = hf_source(tmp_path / "qwen2", arch="qwen2", qkv_bias=True, **CARRIED)
    raw, _ = load_checked(train(src, tmp_path / "out", tmp_path), "qwen2")
    expect_carried(raw, CARRIED)


def test_trained_llama_from_gguf(gguf_src, tmp_path):
    raw, _ = load_checked(train(gguf_src, tmp_path / "out", tmp_path), "llama")
    assert raw["rms_norm_eps"] == 1e-05 and raw["rope_theta"] == 250000.0
    assert raw["attention_bias"] is False and raw["head_dim"] == 8


@pytest.mark.parametrize("fmt", ["mixtral", "qwen2-moe"])
def test_trained_moe(llama_src, tmp_path, fmt):
    moe = tmp_path / "moe"
    cli("upcycle", llama_src, moe, "--format", fmt, "--experts", 4, "--top-k", 2, "--layers", "all")
    raw, _ = load_checked(train(moe, tmp_path / "out", tmp_path), fmt.replace("-", "_"))
    expect_carried(raw, CARRIED)
    upcycled = json.loads((moe / "config.json").read_text())
    assert raw["moeupcycle"] == upcycled["moeupcycle"]


def test_trained_from_an_older_config_with_int_floats(llama_src, tmp_path):
    """A checkpoint whose config.json wrote float fields as ints (as earlier versions of the
    library did) is saved with those fields as floats of the same value."""
    moe = tmp_path / "moe"
    cli("upcycle", llama_src, moe, "--experts", 4, "--top-k", 2)
    config = json.loads((moe / "config.json").read_text())
    for key in ["dtype", "rope_parameters"]:
        config.pop(key, None)
    config.update(router_jitter_noise=0, attention_dropout=0, rope_theta=10000, router_aux_loss_coef=0,
                  initializer_range=0, torch_dtype="float32")
    (moe / "config.json").write_text(json.dumps(config))
    raw, _ = load_checked(train(moe, tmp_path / "out", tmp_path), "mixtral")
    for key in ["router_jitter_noise", "attention_dropout", "router_aux_loss_coef", "initializer_range"]:
        assert raw[key] == 0.0 and isinstance(raw[key], float), key
    assert raw["rope_theta"] == 10000.0 and raw["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert raw["rms_norm_eps"] == 1e-06
