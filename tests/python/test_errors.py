"""Bad input answers with a status code and a message, never a crash."""
import ctypes
import json
import struct

import numpy as np
import pytest

from abi import LibError, inspect, params, raises, result, upcycle
from models import dense_weights, write_hf
from moeupcycle import _capi as C


@pytest.fixture
def dense(tmp_path):
    src = tmp_path / "dense"
    write_hf(src, dense_weights(np.random.default_rng(0)))
    return src


def test_version_and_status_strings():
    assert C.lib.moe_version_number() == 800 == C.MOE_VERSION_NUMBER
    assert C.lib.moe_version_string() == b"0.8.0" == C.MOE_VERSION_STRING.encode()
    assert C.lib.moe_status_string(C.MOE_OK) == b"ok"
    assert C.lib.moe_status_string(C.MOE_ERR_FORMAT) == b"malformed file"
    assert C.lib.moe_status_string(C.MOE_ERR_NUMERIC) not in (b"unknown status", b"")
    assert C.lib.moe_status_string(12345) == b"unknown status"
    assert C.lib.moe_last_error() is not None


def test_null_pointers():
    assert C.lib.moe_checkpoint_inspect(None, b"x") == C.MOE_ERR_NULL_POINTER
    assert b"out is NULL" in C.lib.moe_last_error()
    info = C.moe_checkpoint_info()
    info.struct_size = ctypes.sizeof(info)
    assert C.lib.moe_checkpoint_inspect(info, None) == C.MOE_ERR_NULL_POINTER
    assert b"path is NULL" in C.lib.moe_last_error()
    assert C.lib.moe_upcycle(None, None, b"out", None) == C.MOE_ERR_NULL_POINTER
    assert b"input_path" in C.lib.moe_last_error()
    assert C.lib.moe_upcycle_params_init(None, ctypes.sizeof(C.moe_upcycle_params)) == C.MOE_ERR_NULL_POINTER
    assert b"params is NULL" in C.lib.moe_last_error()


def test_struct_size_checked(dense, tmp_path):
    info = C.moe_checkpoint_info()
    info.struct_size = 0
    assert C.lib.moe_checkpoint_inspect(info, str(dense).encode()) == C.MOE_ERR_INVALID_ARGUMENT
    p = params(C.moe_upcycle_params)
    p.struct_size = 8
    r = result(C.moe_upcycle_result)
    assert C.lib.moe_upcycle(r, str(dense).encode(), str(tmp_path / "o").encode(), p) == C.MOE_ERR_INVALID_ARGUMENT
    assert b"struct_size" in C.lib.moe_last_error()


def test_null_params_means_defaults(dense, tmp_path):
    assert C.lib.moe_upcycle(None, str(dense).encode(), str(tmp_path / "o").encode(), None) == C.MOE_OK
    cfg = json.loads((tmp_path / "o" / "config.json").read_text())
    assert cfg["num_local_experts"] == 8 and cfg["num_experts_per_tok"] == 2


def test_missing_input(tmp_path):
    raises(C.MOE_ERR_NOT_FOUND, "does not exist", inspect, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    raises(C.MOE_ERR_NOT_FOUND, "config.json", inspect, tmp_path / "empty")


def test_output_exists_refused_then_forced(dense, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    raises(C.MOE_ERR_EXISTS, "already exists", upcycle, dense, out)
    assert (out / "keep.txt").read_text() == "user data"
    upcycle(dense, out, force=1)
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()


def test_force_never_replaces_the_input(dense):
    raises(C.MOE_ERR_INVALID_ARGUMENT, "is or contains the input", upcycle, dense, dense, force=1)
    assert (dense / "model.safetensors").exists()
    raises(C.MOE_ERR_INVALID_ARGUMENT, "is or contains the input", upcycle, dense, dense.parent, force=1)


def test_output_parent_missing(dense, tmp_path):
    raises(C.MOE_ERR_NOT_FOUND, "parent directory", upcycle, dense, tmp_path / "a" / "b")


@pytest.mark.parametrize("kw,fragment", [
    (dict(num_experts=0), "experts must be in 1..1024"),
    (dict(num_experts=5000), "experts must be in 1..1024"),
    (dict(num_experts=4, top_k=5), "top-k must be in 1..4"),
    (dict(top_k=0), "top-k must be in"),
    (dict(method="drop", ratio=0.0), "ratio must be in (0, 1]"),
    (dict(method="drop", ratio=1.5), "ratio must be in (0, 1]"),
    (dict(method="noise", ratio=float("nan")), "ratio is not finite"),
    (dict(method="granular", granularity=3), "does not divide the FFN size"),
    (dict(method="granular", granularity=16, num_experts=8), "does not divide the number of experts"),
    (dict(method="partition", num_experts=8, granularity=4, partition_disjoint=1), "disjoint partition"),
    (dict(method="copy", granularity=2), "granularity applies"),
    (dict(layers="0,7"), "out of range"),
    (dict(layers="every:0"), "every:N"),
    (dict(layers="abc"), "not a layer index"),
    (dict(format="qwen2-moe", layers="9"), "out of range"),
    (dict(method=17), "params->method has invalid value 17"),
    (dict(granular_scaling=3), "params->granular_scaling has invalid value 3"),
    (dict(dtype=9), "params->dtype has invalid value 9"),
    (dict(dtype=-2), "params->dtype has invalid value -2"),
    (dict(routing=5), "params->routing has invalid value 5"),
    (dict(router_std=-1.0), "router std"),
    (dict(max_shard_bytes=10), "max shard size"),
    (dict(aux_loss_coef=-1.0), "params->aux_loss_coef must be finite and >= 0"),
    (dict(aux_loss_coef=float("inf")), "params->aux_loss_coef must be finite and >= 0"),
])
def test_invalid_parameters(dense, tmp_path, kw, fragment):
    raises(C.MOE_ERR_INVALID_ARGUMENT, fragment, upcycle, dense, tmp_path / "o", **kw)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kw,fragment", [
    (dict(layers="0"), "mixtral format makes every layer MoE"),
    (dict(shared_expert=1), "no shared expert"),
    (dict(routing="softmax-topk"), "renormalizes"),
    (dict(routing="sigmoid-topk"), "for MoE layers only"),
    (dict(dtype="q8_0"), "q8_0 is not an output dtype"),
    (dict(dtype="q4_1"), "q4_1 is not an output dtype"),
])
def test_unsupported_combinations(dense, tmp_path, kw, fragment):
    raises(C.MOE_ERR_UNSUPPORTED, fragment, upcycle, dense, tmp_path / "o", **kw)


def test_formats_refuse_attention_they_cannot_hold(tmp_path):
    """What an output format cannot hold of the dense model's attention is refused before anything is
    written: q/k/v biases in Mixtral, head_dim x heads != hidden size in Qwen2-MoE (whose config.json has
    no head_dim); the other format takes each."""
    rng = np.random.default_rng(3)
    qwen = tmp_path / "qwen2"
    write_hf(qwen, dense_weights(rng, qkv_bias=True), arch="qwen2")
    raises(C.MOE_ERR_UNSUPPORTED, "has q/k/v biases (qwen2), which the mixtral format cannot hold", upcycle, qwen,
           tmp_path / "o1")
    assert not (tmp_path / "o1").exists()
    upcycle(qwen, tmp_path / "qwen2-moe", format="qwen2-moe")
    # Two heads of 8 in a hidden size of 32.
    w = dense_weights(rng, hidden=32, heads=4, kv_heads=2)
    for l in range(2):
        p = f"model.layers.{l}.self_attn."
        w[p + "q_proj.weight"] = w[p + "q_proj.weight"][:16]
        w[p + "k_proj.weight"] = w[p + "k_proj.weight"][:8]
        w[p + "v_proj.weight"] = w[p + "v_proj.weight"][:8]
        w[p + "o_proj.weight"] = np.ascontiguousarray(w[p + "o_proj.weight"][:, :16])
    narrow = tmp_path / "narrow"
    write_hf(narrow, w, heads=2, kv_heads=1)
    config = json.loads((narrow / "config.json").read_text())
    config["head_dim"] = 8
    (narrow / "config.json").write_text(json.dumps(config))
    raises(C.MOE_ERR_UNSUPPORTED, "the qwen2-moe format needs head_dim x heads == hidden size (8 x 2 != 32)",
           upcycle, narrow, tmp_path / "o2", format="qwen2-moe")
    assert not (tmp_path / "o2").exists()
    upcycle(narrow, tmp_path / "mixtral")


def test_moe_input_refused(dense, tmp_path):
    upcycle(dense, tmp_path / "moe")
    raises(C.MOE_ERR_UNSUPPORTED, "already an MoE checkpoint", upcycle, tmp_path / "moe", tmp_path / "again")


def _header(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return raw, n, json.loads(raw[8:8 + n])


def _rewrite(path, header, data):
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def test_corrupt_safetensors(dense):
    f = dense / "model.safetensors"
    raw, n, header = _header(f)
    data = raw[8 + n:]
    # Truncated data.
    f.write_bytes(raw[:-10])
    raises(C.MOE_ERR_FORMAT, "out of range", inspect, dense)
    # Truncated header.
    f.write_bytes(raw[:8 + n // 2])
    raises(C.MOE_ERR_FORMAT, "truncated", inspect, dense)
    # Absurd header length.
    f.write_bytes(struct.pack("<Q", 1 << 40) + raw[8:])
    raises(C.MOE_ERR_FORMAT, "100 MB", inspect, dense)
    # Trailing garbage.
    f.write_bytes(raw + b"xxxxxxxx")
    raises(C.MOE_ERR_FORMAT, "trailing", inspect, dense)
    # Not JSON.
    f.write_bytes(struct.pack("<Q", 4) + b"{abc" + data)
    raises(C.MOE_ERR_FORMAT, "invalid JSON", inspect, dense)
    # Unsupported dtype.
    h2 = dict(header)
    name = "model.norm.weight"
    h2[name] = dict(h2[name], dtype="I64")
    _rewrite(f, h2, data)
    raises(C.MOE_ERR_UNSUPPORTED, "I64", inspect, dense)
    # Size does not match the shape.
    h3 = dict(header)
    h3[name] = dict(h3[name], shape=[7])
    _rewrite(f, h3, data)
    raises(C.MOE_ERR_FORMAT, name, inspect, dense)


def test_missing_tensor_and_wrong_shape(tmp_path):
    rng = np.random.default_rng(0)
    w = dense_weights(rng)
    del w["model.layers.1.mlp.up_proj.weight"]
    src = tmp_path / "a"
    write_hf(src, w)
    raises(C.MOE_ERR_NOT_FOUND, "model.layers.1.mlp.up_proj.weight", inspect, src)
    w = dense_weights(rng)
    w["model.layers.0.self_attn.k_proj.weight"] = w["model.layers.0.self_attn.k_proj.weight"][:8]
    src = tmp_path / "b"
    write_hf(src, w)
    raises(C.MOE_ERR_SHAPE, "k_proj", inspect, src)


def test_unsupported_architecture(dense):
    cfg = json.loads((dense / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (dense / "config.json").write_text(json.dumps(cfg))
    raises(C.MOE_ERR_UNSUPPORTED, "gpt2", inspect, dense)
    cfg["model_type"] = "llama"
    cfg["hidden_act"] = "gelu"
    (dense / "config.json").write_text(json.dumps(cfg))
    raises(C.MOE_ERR_UNSUPPORTED, "gelu", inspect, dense)
    (dense / "config.json").write_text("{not json")
    raises(C.MOE_ERR_FORMAT, "config.json", inspect, dense)


def test_errors_are_per_thread(tmp_path):
    import threading
    seen = {}

    def worker(name):
        inspect_status = None
        try:
            inspect(tmp_path / name)
        except LibError as e:
            inspect_status = e.message
        seen[name] = (inspect_status, C.lib.moe_last_error())

    threads = [threading.Thread(target=worker, args=(f"missing{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, (msg, last) in seen.items():
        assert name in msg and name.encode() in last


def test_duplicate_tensor_name_in_header(dense):
    f = dense / "model.safetensors"
    raw, n, header = _header(f)
    data = raw[8 + n:]
    name = "model.norm.weight"
    e = header[name]
    # Same name twice, the second entry covering the first entry's bytes again.
    text = json.dumps(header)[:-1] + ", " + json.dumps(name) + ": " + json.dumps(e) + "}"
    f.write_bytes(struct.pack("<Q", len(text)) + text.encode() + data)
    raises(C.MOE_ERR_FORMAT, "appears twice", inspect, dense)
