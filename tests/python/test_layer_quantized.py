"""Expert weights held as GGML blocks (moe_layer_config.storage MOE_DTYPE_Q8_0, Q4_0, Q4_1) through the C ABI:
set_weight rounds each row to blocks as GGML does and get_weight gives the blocks' values back; a forward of
more than 16 tokens equals an f32 layer holding those values; one of at most 16 tokens runs integer dot
products on activations rounded to int8 per block of 32 (the float64 reference with that rounding, and
measurably not the f32 product); a GGUF's expert blocks of the stored type are kept bit for bit by
moe_layer_load; backward, borrowing and sizes that are not whole blocks are refused with messages."""
from __future__ import annotations

import ctypes
import json

import gguf
import numpy as np
import pytest
from gguf import quants

import layer_reference as ref
import reference
from abi import Layer, Runtime, expect, layer_config, upcycle
from gguf_models import TYPES
from models import dense_weights, write_hf
from moeupcycle import _capi as C
from test_gguf_export import export
from test_quantized import QTYPES, ggml_round

H, F, E, K = 64, 96, 4, 2
EXPERT_WEIGHTS = ("gate", "up", "down", "shared_gate", "shared_up", "shared_down")


def held(W, qtype):
    """The weights as a layer storing `qtype` holds them: expert matrices in blocks, the router and the
    shared-expert gate in f32."""
    return {k: ggml_round(v, qtype) if k in EXPERT_WEIGHTS else v for k, v in W.items()}


def relative(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("shared", [0, 32])
@pytest.mark.parametrize("qtype", list(QTYPES))
def test_quantized_experts_hold_blocks_and_run_both_paths(rt, qtype, shared):
    rng = np.random.default_rng(40 + shared + len(qtype))
    W = ref.random_weights(rng, hidden=H, ffn=F, experts=E, shared_ffn=shared, router_scale=2.0)
    want_w = held(W, qtype)
    x_long = rng.standard_normal((300, H)).astype(np.float32)
    x_short = rng.standard_normal((5, H)).astype(np.float32)
    shape = dict(hidden_size=H, moe_intermediate_size=F, num_experts=E, top_k=K,
                 shared_expert_intermediate_size=shared)
    with Layer(rt, storage=QTYPES[qtype], **shape) as layer:
        assert layer.config.storage == QTYPES[qtype]
        layer.set_all(W)
        for k, v in want_w.items():
            np.testing.assert_array_equal(layer.get(k).reshape(v.shape), v, err_msg=k)
            if k in EXPERT_WEIGHTS:
                assert np.abs(v - W[k]).max() > 1e-4, k  # the blocks really rounded the weights
        # One expert at a time reads back the same rows.
        np.testing.assert_array_equal(layer.get("down", 2).reshape(H, F), want_w["down"][2])
        long, short = layer.forward(x_long), layer.forward(x_short)
        # Inference only: backward needs f32 or bf16 experts.
        layer.forward(x_short, C.MOE_FORWARD_SAVE)
        dx = np.zeros_like(x_short)
        expect(C.lib.moe_layer_backward(layer.h, x_short.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                        dx.ctypes.data_as(ctypes.POINTER(ctypes.c_float))),
               C.MOE_ERR_UNSUPPORTED, "backward needs f32 or bf16", qtype)
    with Layer(rt, storage=C.MOE_DTYPE_F32, **shape) as f32:
        f32.set_all(want_w)
        f32_long, f32_short = f32.forward(x_long), f32.forward(x_short)

    cfg = ref.Config(top_k=K)
    r_long = ref.forward(x_long, want_w, cfg)
    assert r_long.plan.margin > 2e-5, "test data has a near tie; change the seed"
    # Many tokens: blocks of rows dequantized to f32, the f32 kernels.
    np.testing.assert_array_equal(long, f32_long)
    assert relative(long, r_long.out) <= 1e-6
    # Few tokens: int8 activations per block of 32 into integer dot products.
    r_short = ref.forward(x_short, want_w, cfg, expert_input=ref.int8_activations)
    err, moved = relative(short, r_short.out), relative(short, f32_short)
    print(f"{qtype} shared={shared}: 5 tokens vs int8 reference {err:.1e}, vs f32 product {moved:.1e}")
    assert err <= 1e-5
    assert moved >= 1e-4


def test_sizes_that_are_not_whole_blocks_are_refused(rt):
    for fields, name in ((dict(hidden_size=48, moe_intermediate_size=64), "hidden_size is 48"),
                         (dict(hidden_size=64, moe_intermediate_size=80), "moe_intermediate_size is 80"),
                         (dict(hidden_size=64, moe_intermediate_size=64, shared_expert_intermediate_size=40),
                          "shared_expert_intermediate_size is 40")):
        h = ctypes.c_void_p()
        cfg = layer_config(num_experts=4, top_k=2, storage=C.MOE_DTYPE_Q4_0, **fields)
        expect(C.lib.moe_layer_create(ctypes.byref(h), rt.h, cfg), C.MOE_ERR_UNSUPPORTED, name, "blocks of 32")
        assert not h.value
    h = ctypes.c_void_p()
    cfg = layer_config(hidden_size=64, moe_intermediate_size=64, num_experts=4, top_k=2, storage=C.MOE_DTYPE_F16)
    expect(C.lib.moe_layer_create(ctypes.byref(h), rt.h, cfg), C.MOE_ERR_UNSUPPORTED, "storage", "MOE_DTYPE_Q4_1")
    with Layer(rt, hidden_size=64, moe_intermediate_size=64, num_experts=4, top_k=2, storage=C.MOE_DTYPE_Q8_0) as layer:
        w = np.zeros(4 * 64 * 64, np.int8)
        p = w.ctypes.data_as(ctypes.c_void_p)
        expect(C.lib.moe_layer_borrow_experts(layer.h, C.MOE_DTYPE_Q8_0, p, p, p), C.MOE_ERR_UNSUPPORTED, "f32 or bf16")


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    base = tmp_path_factory.mktemp("qexperts")
    dense = base / "dense"
    write_hf(dense, dense_weights(np.random.default_rng(8), vocab=300, hidden=H, ffn=F, heads=4, kv_heads=2))
    reference.write_tiny_tokenizer(dense)
    upcycle(dense, base / "mixtral", num_experts=E, top_k=K, method="drop", ratio=0.3, router_std=0.5, seed=5)
    return base / "mixtral"


@pytest.mark.parametrize("qtype", list(QTYPES))
def test_layer_load_keeps_a_ggufs_expert_blocks(rt, mixtral, tmp_path, qtype):
    out = tmp_path / f"m.{qtype}.gguf"
    export(mixtral, out, dtype=QTYPES[qtype])
    g = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    assert g["blk.1.ffn_down_exps.weight"].tensor_type.name == qtype
    stored = {k: quants.dequantize(g[f"blk.1.ffn_{k}_exps.weight"].data, TYPES[qtype]).reshape(shape)
              for k, shape in (("gate", (E, F, H)), ("up", (E, F, H)), ("down", (E, H, F)))}

    def load(storage):
        h = ctypes.c_void_p()
        st = C.lib.moe_layer_load(ctypes.byref(h), rt.h, str(out).encode(), 1,
                                  layer_config(hidden_size=0, moe_intermediate_size=0, num_experts=0, top_k=0,
                                               storage=storage))
        assert st == C.MOE_OK
        return Layer(rt, handle=h)

    x = np.random.default_rng(9).standard_normal((64, H)).astype(np.float32)
    with load(QTYPES[qtype]) as layer, load(C.MOE_DTYPE_F32) as f32:
        assert layer.config.storage == QTYPES[qtype]
        for k, v in stored.items():
            np.testing.assert_array_equal(layer.get(k).reshape(v.shape), v, err_msg=k)
            np.testing.assert_array_equal(f32.get(k).reshape(v.shape), v, err_msg=k)
        np.testing.assert_array_equal(layer.forward(x), f32.forward(x))


def test_experts_split_over_two_nodes_at_whole_blocks():
    """Row-slice placement over two nodes splits each expert at a multiple of 32 rows when it stores blocks
    (16 otherwise), so each node's down projection holds whole blocks of its columns."""
    rt = Runtime(threads=4, synthetic="pack:2 [numa] core:2 pu:1")
    try:
        shape = dict(hidden_size=H, moe_intermediate_size=F, num_experts=E, top_k=K, shared_expert_intermediate_size=32,
                     placement=C.MOE_PLACEMENT_ROW_SLICE)
        for storage, cut in ((C.MOE_DTYPE_F32, 48), (C.MOE_DTYPE_Q4_1, 64)):
            plan = json.loads(rt.describe(layer_config(storage=storage, **shape)))["placement"]
            assert plan["splits_experts"]
            assert [s["ffn_end"] for s in plan["shards"][0]["slices"]] == [cut] * E + [32 if cut == 64 else 16]
        rng = np.random.default_rng(12)
        W = ref.random_weights(rng, hidden=H, ffn=F, experts=E, shared_ffn=32, router_scale=2.0)
        want_w = held(W, "Q4_1")
        x_long = rng.standard_normal((200, H)).astype(np.float32)
        x_short = rng.standard_normal((3, H)).astype(np.float32)
        with Layer(rt, storage=C.MOE_DTYPE_Q4_1, **shape) as layer:
            layer.set_all(W)
            for k, v in want_w.items():
                np.testing.assert_array_equal(layer.get(k).reshape(v.shape), v, err_msg=k)
            long, short = layer.forward(x_long), layer.forward(x_short)
        cfg = ref.Config(top_k=K)
        assert relative(long, ref.forward(x_long, want_w, cfg).out) <= 1e-6
        assert relative(short, ref.forward(x_short, want_w, cfg, expert_input=ref.int8_activations).out) <= 1e-5
    finally:
        rt.close()
