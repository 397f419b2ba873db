"""The MoE layer (moe_runtime_*, moe_layer_*) through ctypes, against the independent
float64 reference in layer_reference.py, and finite differences of the library itself."""
from __future__ import annotations

import ctypes
import json
import math

import numpy as np
import pytest

import layer_reference as ref
from abi import (WEIGHT_IDS, Layer, Runtime, check, expect, fptr, last_error, layer_config, params, result,
                 upcycle)
from models import bf16_round, dense_weights, read_safetensors_dir, to_bf16_bytes, write_hf
from moeupcycle import _capi as C

ROUTINGS = [C.MOE_ROUTING_SOFTMAX_TOPK_RENORM, C.MOE_ROUTING_SOFTMAX_TOPK, C.MOE_ROUTING_TOPK_SOFTMAX,
            C.MOE_ROUTING_SIGMOID_TOPK, C.MOE_ROUTING_SIGMOID_TOPK_RENORM]
PLACEMENTS_ = {"row-slice": C.MOE_PLACEMENT_ROW_SLICE, "expert": C.MOE_PLACEMENT_EXPERT,
               "interleave": C.MOE_PLACEMENT_INTERLEAVE, "none": C.MOE_PLACEMENT_NONE}
ROUTING_NAMES = ["softmax-topk-renorm", "softmax-topk", "topk-softmax", "sigmoid-topk", "sigmoid-topk-renorm"]


# --------------------------------------------------------------------------- helpers


def dims(H, F, E, shared=0):
    """The shape fields of moe_layer_config: width H, routed expert size F, E experts, shared expert size."""
    return dict(hidden_size=H, moe_intermediate_size=F, num_experts=E, shared_expert_intermediate_size=shared)


def ref_config(top_k, routing=0, capacity_factor=0.0, expert_choice=False, aux_loss_coef=0.01,
               z_loss_coef=0.001, **_):
    return ref.Config(top_k=top_k, routing=routing, capacity_factor=float(np.float32(capacity_factor)),
                      expert_choice=bool(expert_choice), balance_coef=float(np.float32(aux_loss_coef)),
                      z_coef=float(np.float32(z_loss_coef)))


def close(got, want, rtol=1e-4, atol=1e-4, what=""):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64).reshape(got.shape)
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    err = np.abs(got - want)
    bad = err > atol * scale + rtol * np.abs(want)
    if bad.any():
        i = np.unravel_index(np.argmax(err), err.shape)
        raise AssertionError(f"{what}: {int(bad.sum())}/{bad.size} entries differ; worst at {i}: "
                             f"got {got[i]!r} want {want[i]!r} (max abs err {err.max():.3g}, scale {scale:.3g})")


def run_case(rt, W, x, cfg, *, check_margin=True, flags=0):
    """Creates a layer, runs forward, compares forward, routing and stats with the reference."""
    H = x.shape[1]
    E, F = W["gate"].shape[:2]
    shared = W["shared_gate"].shape[0] if "shared_gate" in W else 0
    layer = Layer(rt, **dims(H, F, E, shared), **cfg)
    layer.set_all(W)
    rc = ref_config(**cfg)
    r = ref.forward(x, W, rc)
    if check_margin:
        assert r.plan.margin > 2e-5, f"test data has a near tie ({r.plan.margin}); change the seed"
    out = layer.forward(x, flags)
    return layer, r, rc, out


def compare_forward(layer, r, out, T, what=""):
    close(out, r.out, what=f"{what} out")
    close(layer.routing(T), r.combine, rtol=1e-5, atol=1e-6, what=f"{what} routing")
    s, tpe = layer.stats()
    assert s.tokens == T
    assert list(tpe) == list(r.tokens_per_expert), (list(tpe), list(r.tokens_per_expert))
    assert s.assignments == r.assignments
    assert s.dropped == r.plan.dropped
    assert s.aux_loss == pytest.approx(r.balance_loss, rel=1e-4, abs=1e-6), "aux_loss"
    assert s.z_loss == pytest.approx(r.z_loss, rel=1e-4, abs=1e-6), "z_loss"


def compare_backward(layer, r, rc, dout, what=""):
    dx = layer.backward(dout)
    rdx, rg = ref.backward(r, rc, dout)
    close(dx, rdx, what=f"{what} dx")
    for k, g in rg.items():
        close(layer.grad(k), g, what=f"{what} grad {k}")
    return dx


def data(seed, T, H, E, F, shared_ffn=0, router_scale=2.0):
    rng = np.random.default_rng(seed)
    W = ref.random_weights(rng, hidden=H, ffn=F, experts=E, shared_ffn=shared_ffn, router_scale=router_scale)
    x = rng.standard_normal((T, H)).astype(np.float32)
    return rng, W, x


# --------------------------------------------------------------------------- the reference itself


REF_CASES = [
    dict(routing=0, top_k=2), dict(routing=1, top_k=2), dict(routing=2, top_k=3), dict(routing=3, top_k=2),
    dict(routing=4, top_k=2), dict(routing=4, top_k=1), dict(routing=0, top_k=2, capacity_factor=0.5),
    dict(routing=0, top_k=2, expert_choice=1), dict(routing=3, top_k=1, expert_choice=1, capacity_factor=0.5),
    dict(routing=1, top_k=4),
]


@pytest.mark.parametrize("case", REF_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_reference_backward_matches_its_own_finite_differences(case):
    """The float64 reference's analytic backward equals central differences of its forward."""
    rng = np.random.default_rng(7)
    T, H, F, E = 9, 6, 5, 4
    W = {k: v.astype(np.float64) for k, v in
         ref.random_weights(rng, hidden=H, ffn=F, experts=E, shared_ffn=3, router_scale=2.0).items()}
    x = rng.standard_normal((T, H))
    rc = ref.Config(balance_coef=0.3, z_coef=0.2, **{k: v for k, v in case.items()})
    R = rng.standard_normal((T, H))
    r = ref.forward(x, W, rc)
    dx, g = ref.backward(r, rc, R)
    eps = 1e-6

    def fd(get, set_):
        v0 = get()
        set_(v0 + eps)
        lp = ref.loss(x, W, rc, R, r.plan)
        set_(v0 - eps)
        lm = ref.loss(x, W, rc, R, r.plan)
        set_(v0)
        return (lp - lm) / (2 * eps)

    for idx in np.ndindex(x.shape):
        num = fd(lambda: x[idx], lambda v: x.__setitem__(idx, v))
        assert num == pytest.approx(dx[idx], rel=1e-6, abs=1e-8), ("x", idx)
    for k, a in W.items():
        for idx in list(np.ndindex(a.shape))[::3]:
            num = fd(lambda: a[idx], lambda v: a.__setitem__(idx, v))
            assert num == pytest.approx(g[k][idx], rel=1e-6, abs=1e-8), (k, idx)


def test_reference_semantics_by_hand():
    """A few values of the reference worked out by hand from the header's text."""
    logits = np.array([[1.0, 3.0, 2.0, 0.0]])
    s = ref.softmax(logits)[0]
    for routing, want in [(0, {1: s[1] / (s[1] + s[2]), 2: s[2] / (s[1] + s[2])}),
                          (1, {1: s[1], 2: s[2]}), (2, {1: s[1] / (s[1] + s[2]), 2: s[2] / (s[1] + s[2])}),
                          (3, {1: ref.sigmoid(3.0), 2: ref.sigmoid(2.0)}),
                          (4, {1: ref.sigmoid(3.0) / (ref.sigmoid(3.0) + ref.sigmoid(2.0)),
                               2: ref.sigmoid(2.0) / (ref.sigmoid(3.0) + ref.sigmoid(2.0))})]:
        cfg = ref.Config(top_k=2, routing=routing)
        p = ref.plan(logits, cfg)
        comb = ref._combine(logits, cfg, p)
        assert {e: comb[0, e] for e in np.nonzero(comb[0])[0]} == pytest.approx(want)
    # capacity: T=4, K=1, E=2, cf=0.5 -> cap 1; all tokens prefer expert 0: token 0 kept, 3 dropped
    cfg = ref.Config(top_k=1, capacity_factor=0.5)
    p = ref.plan(np.array([[1.0, 0.0]] * 4), cfg)
    assert p.capacity == 1 and p.dropped == 3 and p.kept[:, 0].tolist() == [True, False, False, False]
    # slot priority: K=2, cap=ceil(1*2*2/2)=2 ... with cf=0.5 cap=1: slot-0 choices are filled first
    p = ref.plan(np.array([[0.0, 1.0], [1.0, 0.0]]), ref.Config(top_k=2, capacity_factor=0.5))
    assert p.kept.tolist() == [[False, True], [True, False]] and p.dropped == 2
    # ties go to the lower expert index; expert choice ties to the lower token index
    p = ref.plan(np.zeros((3, 4)), ref.Config(top_k=2))
    assert p.selected.tolist() == [[True, True, False, False]] * 3
    p = ref.plan(np.zeros((3, 2)), ref.Config(top_k=1, expert_choice=True))  # cap = ceil(3/2) = 2
    assert p.kept.tolist() == [[True, True], [True, True], [False, False]]


# --------------------------------------------------------------------------- forward vs reference


FWD_E, FWD_H, FWD_F = 6, 32, 40


@pytest.mark.parametrize("T", [0, 1, 7, 64, 300])
@pytest.mark.parametrize("k", [1, 2, FWD_E])
@pytest.mark.parametrize("routing", ROUTINGS, ids=ROUTING_NAMES)
def test_forward_matches_reference(rt, routing, k, T):
    _, W, x = data(100 + 10 * routing + k, T, FWD_H, FWD_E, FWD_F)
    cfg = dict(top_k=k, routing=routing)
    layer, r, rc, out = run_case(rt, W, x, cfg)
    with layer:
        compare_forward(layer, r, out, T, what=f"routing {routing} k {k} T {T}")


@pytest.mark.parametrize("cf", [0.5, 1.0, 1.25])
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("routing", ROUTINGS, ids=ROUTING_NAMES)
def test_forward_with_capacity(rt, routing, k, cf):
    T = 37
    _, W, x = data(200 + routing, T, FWD_H, FWD_E, FWD_F, router_scale=3.0)
    layer, r, rc, out = run_case(rt, W, x, dict(top_k=k, routing=routing, capacity_factor=cf))
    with layer:
        compare_forward(layer, r, out, T, what=f"capacity {cf}")
        if cf == 0.5:
            assert r.plan.dropped > 0


@pytest.mark.parametrize("cf", [0.0, 0.5, 2.0, 10.0])
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("routing", ROUTINGS, ids=ROUTING_NAMES)
def test_forward_expert_choice(rt, routing, k, cf):
    T = 29
    _, W, x = data(300 + routing, T, FWD_H, FWD_E, FWD_F)
    layer, r, rc, out = run_case(rt, W, x, dict(top_k=k, routing=routing, capacity_factor=cf, expert_choice=1))
    with layer:
        compare_forward(layer, r, out, T, what=f"expert choice cf {cf}")


def test_forward_shared_expert(rt):
    T = 50
    _, W, x = data(3, T, FWD_H, FWD_E, FWD_F, shared_ffn=24)
    layer, r, rc, out = run_case(rt, W, x, dict(top_k=2, routing=0))
    with layer:
        compare_forward(layer, r, out, T, what="shared")


# --------------------------------------------------------------------------- backward vs reference


BWD_CASES = {
    "renorm-k2": dict(routing=0, top_k=2),
    "softmax-k2-shared": dict(routing=1, top_k=2, shared=20),
    "topk-softmax-k1-shared": dict(routing=2, top_k=1, shared=20),
    "sigmoid-k2-shared": dict(routing=3, top_k=2, shared=20),
    "sigmoid-renorm-k3": dict(routing=4, top_k=3),
    "sigmoid-renorm-k1": dict(routing=4, top_k=1),
    "softmax-kE": dict(routing=1, top_k=5),
    "renorm-kE-shared": dict(routing=0, top_k=5, shared=20),
    "capacity-renorm-k2-shared": dict(routing=0, top_k=2, capacity_factor=0.5, shared=20),
    "capacity-sigmoid-k2": dict(routing=3, top_k=2, capacity_factor=0.75),
    "capacity-softmax-k1": dict(routing=1, top_k=1, capacity_factor=0.5),
    "expert-choice-softmax": dict(routing=0, top_k=2, expert_choice=1, shared=20),
    "expert-choice-sigmoid": dict(routing=4, top_k=1, expert_choice=1, capacity_factor=0.5),
    "expert-choice-topk-softmax-cf2": dict(routing=2, top_k=2, expert_choice=1, capacity_factor=2.0),
}


@pytest.mark.parametrize("zero_dout", [False, True], ids=["dout", "aux-only"])
@pytest.mark.parametrize("name", list(BWD_CASES))
def test_backward_matches_reference(rt, name, zero_dout):
    case = dict(BWD_CASES[name])
    shared = case.pop("shared", 0)
    T, H, F, E = 48, 32, 40, 5
    rng, W, x = data(400 + len(name), T, H, E, F, shared_ffn=shared)
    cfg = dict(aux_loss_coef=0.5, z_loss_coef=0.1, **case)
    layer, r, rc, out = run_case(rt, W, x, cfg, flags=C.MOE_FORWARD_SAVE)
    with layer:
        compare_forward(layer, r, out, T, what=name)
        x[:] = np.nan  # "x is not referenced after the call"
        dout = np.zeros((T, H), np.float32) if zero_dout else rng.standard_normal((T, H)).astype(np.float32)
        compare_backward(layer, r, rc, dout, what=name)
        for k in ("gate", "up", "down"):
            full = layer.grad(k).reshape(E, -1)
            for e in range(E):
                assert np.array_equal(layer.grad(k, e), full[e]), (k, e)


def test_backward_accumulates_and_zero_grad(rt):
    T, H, F, E = 20, 32, 40, 4
    rng, W, x = data(5, T, H, E, F, shared_ffn=16)
    layer, r, rc, out = run_case(rt, W, x, dict(top_k=2, routing=0, aux_loss_coef=0.2, z_loss_coef=0.1),
                                 flags=C.MOE_FORWARD_SAVE)
    with layer:
        dout = rng.standard_normal((T, H)).astype(np.float32)
        for k in WEIGHT_IDS:
            assert not layer.grad(k).any(), f"{k} gradient does not start at zero"
        layer.backward(dout)
        g1 = layer.grads(WEIGHT_IDS)
        layer.forward(x, C.MOE_FORWARD_SAVE)
        layer.backward(dout)
        g2 = layer.grads(WEIGHT_IDS)
        for k in WEIGHT_IDS:
            close(g2[k], 2 * g1[k], rtol=1e-5, atol=1e-6, what=f"accumulated {k}")
        # backward consumed the saved forward
        st = C.lib.moe_layer_backward(layer.h, fptr(dout), fptr(np.zeros_like(dout)))
        assert st == C.MOE_ERR_INVALID_ARGUMENT
        check(C.lib.moe_layer_zero_grad(layer.h))
        for k in WEIGHT_IDS:
            assert not layer.grad(k).any()


# --------------------------------------------------------------------------- finite differences of the library


def library_fd_check(layer, x, R, cb, cz, names, rng, *, n_entries=5, eps=1e-2, flags=0, noise_step=None,
                     rtol=3e-3, atol=1e-3, report=None):
    """Central differences of L = sum(out*R) + cb*balance + cz*z through the library (float32),
    compared with its analytic backward: |fd - g| <= rtol*|g| + atol*rms(g of that tensor).
    Entries whose routing pattern changes under eps are skipped."""
    T = x.shape[0]

    def fwd(xx, fl):
        if noise_step is not None:
            check(C.lib.moe_layer_set_noise_step(layer.h, noise_step))
        out = layer.forward(xx, fl)
        s, _ = layer.stats()
        L = float((out.astype(np.float64) * R).sum()) + cb * s.aux_loss + cz * s.z_loss
        return L, layer.routing(T) != 0

    _, pattern = fwd(x, flags | C.MOE_FORWARD_SAVE)
    check(C.lib.moe_layer_zero_grad(layer.h))
    dx = layer.backward(R.astype(np.float32))
    grads = layer.grads(names)
    checked = skipped = 0
    failures = []

    def probe(label, get, set_, analytic, scale):
        nonlocal checked, skipped
        v0 = get()
        set_(v0 + eps)
        lp, pp = fwd(x, flags)
        set_(v0 - eps)
        lm, pm = fwd(x, flags)
        set_(v0)
        if not (np.array_equal(pp, pattern) and np.array_equal(pm, pattern)):
            skipped += 1
            return
        num = (lp - lm) / (2 * eps)
        checked += 1
        err = abs(num - analytic)
        if report is not None:
            report.append(err / (rtol * abs(analytic) + atol * scale))
        if err > rtol * abs(analytic) + atol * scale:
            failures.append(f"{label}: finite difference {num:.6g} analytic {analytic:.6g} (rms of tensor {scale:.3g})")

    def rms(a):
        return float(np.sqrt(np.mean(np.square(a, dtype=np.float64)))) or 1.0

    for _ in range(n_entries):
        i = tuple(int(rng.integers(s)) for s in x.shape)
        probe(f"x{i}", lambda: x[i], lambda v: x.__setitem__(i, v), float(dx[i]), rms(dx))
    for name in names:
        w = layer.get(name)
        for _ in range(n_entries):
            j = int(rng.integers(w.size))

            def set_w(v, j=j):
                w[j] = v
                layer.set(name, w)
            probe(f"{name}[{j}]", lambda j=j: w[j], set_w, float(grads[name][j]), rms(grads[name]))
    assert not failures, "\n".join(failures)
    assert checked >= (len(names) + 1) * n_entries // 2, f"only {checked} entries checked ({skipped} skipped)"
    return checked


FD_CASES = {
    "renorm-k2-shared": dict(routing=0, top_k=2, shared=16),
    "softmax-k1": dict(routing=1, top_k=1),
    "topk-softmax-k2": dict(routing=2, top_k=2, shared=16),
    "sigmoid-k2-shared": dict(routing=3, top_k=2, shared=16),
    "sigmoid-renorm-k2": dict(routing=4, top_k=2),
    "capacity-renorm": dict(routing=0, top_k=2, capacity_factor=0.5, shared=16),
    "expert-choice": dict(routing=0, top_k=2, expert_choice=1, shared=16),
    "expert-choice-sigmoid": dict(routing=3, top_k=1, expert_choice=1),
}


@pytest.mark.parametrize("aux_only", [False, True], ids=["data", "aux-only"])
@pytest.mark.parametrize("name", list(FD_CASES))
def test_library_finite_differences(rt, name, aux_only):
    case = dict(FD_CASES[name])
    shared = case.pop("shared", 0)
    T, H, F, E = 12, 16, 24, 4
    rng, W, x = data(500 + len(name), T, H, E, F, shared_ffn=shared, router_scale=3.0)
    cb, cz = (0.5, 0.2) if aux_only else (0.05, 0.02)
    with Layer(rt, **dims(H, F, E, shared), aux_loss_coef=cb, z_loss_coef=cz, **case) as layer:
        layer.set_all(W)
        R = np.zeros((T, H)) if aux_only else rng.standard_normal((T, H))
        names = ["router"] if aux_only else list(W)
        library_fd_check(layer, x, R, float(np.float32(cb)), float(np.float32(cz)), names, rng)


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("on", ["machine", "synthetic"])
@pytest.mark.parametrize("k", [1, 2])
def test_one_dominant_expert(request, k, on):
    rt = request.getfixturevalue("rt" if on == "machine" else "rt2")
    T, H, F, E = 40, 32, 40, 5
    rng, W, x = data(11, T, H, E, F, shared_ffn=16)
    x[:, 0] = 4.0
    W["router"][:, 0] = -1.0
    W["router"][3, 0] = 3.0  # expert 3 wins every token by a wide margin
    cfg = dict(top_k=k, routing=0, aux_loss_coef=0.1, z_loss_coef=0.01)
    layer, r, rc, out = run_case(rt, W, x, cfg, flags=C.MOE_FORWARD_SAVE)
    with layer:
        assert r.plan.selected[:, 3].all()
        compare_forward(layer, r, out, T, what="dominant")
        _, tpe = layer.stats()
        assert tpe[3] == T
        if k == 1:
            assert list(tpe) == [0, 0, 0, T, 0]
        dout = rng.standard_normal((T, H)).astype(np.float32)
        compare_backward(layer, r, rc, dout, what="dominant")
        for e in range(E):
            if tpe[e] == 0:
                for name in ("gate", "up", "down"):
                    assert not layer.grad(name, e).any(), f"empty expert {e} has a {name} gradient"


def test_zero_tokens(rt):
    H, F, E = 32, 40, 4
    _, W, _ = data(12, 0, H, E, F, shared_ffn=8)
    with Layer(rt, **dims(H, F, E, 8), top_k=2) as layer:
        layer.set_all(W)
        check(C.lib.moe_layer_forward(layer.h, None, 0, None, 0))
        s, tpe = layer.stats()
        assert (s.tokens, s.assignments, s.dropped) == (0, 0, 0) and not tpe.any()
        assert s.aux_loss == 0 and s.z_loss == 0
        out = np.zeros(1, np.float32)
        needed = ctypes.c_size_t(7)
        check(C.lib.moe_layer_get_routing(layer.h, fptr(out), 0, ctypes.byref(needed)))
        assert needed.value == 0
        check(C.lib.moe_layer_forward(layer.h, None, 0, None, C.MOE_FORWARD_SAVE))
        layer.backward(np.zeros((0, H), np.float32))
        for k in WEIGHT_IDS:
            assert not layer.grad(k).any()


def test_capacity_drops_leave_only_kept_experts(rt):
    T, H, F, E = 40, 32, 40, 4
    rng, W, x = data(13, T, H, E, F, router_scale=3.0)
    x[:, 0] = 2.0
    W["router"][1, 0] += 1.0  # expert 1 is popular, so it overflows
    cfg = dict(top_k=2, routing=0, capacity_factor=0.5)
    layer, r, rc, out = run_case(rt, W, x, cfg, flags=C.MOE_FORWARD_SAVE)
    with layer:
        compare_forward(layer, r, out, T, what="drops")
        s, _ = layer.stats()
        assert s.dropped > 0 and s.assignments + s.dropped == T * 2
        routing = layer.routing(T)
        partial = r.plan.selected & ~r.plan.kept
        tokens = np.nonzero(partial.any(1))[0]
        assert len(tokens) > 0
        for t in tokens:
            expect = np.zeros(H)
            for e in np.nonzero(r.plan.kept[t])[0]:
                y, _ = ref._ffn(x[t:t + 1].astype(np.float64), W["gate"][e].astype(np.float64),
                                W["up"][e].astype(np.float64), W["down"][e].astype(np.float64))
                expect += r.combine[t, e] * y[0]
            close(out[t], expect, what=f"token {t} with a dropped assignment")
            assert (routing[t][partial[t]] == 0).all()
        compare_backward(layer, r, rc, rng.standard_normal((T, H)).astype(np.float32), what="drops")


def test_expert_choice_takes_cap_tokens_per_expert(rt):
    T, H, F, E = 30, 32, 40, 6
    rng, W, x = data(14, T, H, E, F)
    layer, r, rc, out = run_case(rt, W, x, dict(top_k=2, routing=0, expert_choice=1, capacity_factor=1.0),
                                 flags=C.MOE_FORWARD_SAVE)
    with layer:
        compare_forward(layer, r, out, T, what="expert choice")
        _, tpe = layer.stats()
        assert list(tpe) == [math.ceil(T * 2 / E)] * E
        compare_backward(layer, r, rc, rng.standard_normal((T, H)).astype(np.float32), what="expert choice")


# --------------------------------------------------------------------------- determinism


def run_fwd_bwd(layer, x, dout):
    check(C.lib.moe_layer_zero_grad(layer.h))
    out = layer.forward(x, C.MOE_FORWARD_SAVE)
    dx = layer.backward(dout)
    return out, dx, layer.grads(WEIGHT_IDS)


def test_deterministic_and_thread_count_independent(rt):
    T, H, F, E = 96, 32, 48, 6
    rng, W, x = data(15, T, H, E, F, shared_ffn=16)
    dout = rng.standard_normal((T, H)).astype(np.float32)
    cfg = dict(dims(H, F, E, 16), top_k=2)
    with Layer(rt, **cfg) as a:
        a.set_all(W)
        o1, d1, g1 = run_fwd_bwd(a, x, dout)
        o2, d2, g2 = run_fwd_bwd(a, x, dout)
        assert np.array_equal(o1, o2) and np.array_equal(d1, d2)
        for k in g1:
            assert np.array_equal(g1[k], g2[k]), k
    rt1 = Runtime(threads=1)
    try:
        assert rt1.info().workers == 1
        with Layer(rt1, **cfg) as b:
            b.set_all(W)
            o3, d3, g3 = run_fwd_bwd(b, x, dout)
    finally:
        rt1.close()
    rt3 = Runtime(threads=3)
    try:
        with Layer(rt3, **cfg) as c:
            c.set_all(W)
            o4, d4, g4 = run_fwd_bwd(c, x, dout)
    finally:
        rt3.close()
    for o, d, g, n in ((o3, d3, g3, 1), (o4, d4, g4, 3)):
        close(o, o1, rtol=1e-5, atol=1e-6, what=f"threads {n} out")
        close(d, d1, rtol=1e-5, atol=1e-6, what=f"threads {n} dx")
        for k in g1:
            close(g[k], g1[k], rtol=1e-5, atol=1e-6, what=f"threads {n} grad {k}")


def test_init_random_is_deterministic(rt):
    with Layer(rt, **dims(16, 24, 4, 8), top_k=2) as a, \
            Layer(rt, **dims(16, 24, 4, 8), top_k=2,
                  placement=C.MOE_PLACEMENT_EXPERT) as b:
        check(C.lib.moe_layer_init_random(a.h, 42, 0.5))
        check(C.lib.moe_layer_init_random(b.h, 42, 0.5))
        for k in WEIGHT_IDS:
            assert np.array_equal(a.get(k), b.get(k)), k
        assert not a.get("shared_expert_gate").any()
        g = a.get("gate")
        assert 0.4 < g.std() < 0.6 and abs(g.mean()) < 0.05


# --------------------------------------------------------------------------- bf16 storage and borrowed experts


def test_bf16_storage(rt):
    T, H, F, E = 33, 32, 40, 4
    rng, W, x = data(16, T, H, E, F, shared_ffn=16)
    with Layer(rt, **dims(H, F, E, 16), top_k=2, storage=C.MOE_DTYPE_BF16) as layer:
        layer.set_all(W)
        Wr = dict(W)
        # "Compute is f32; the router and the shared-expert gate stay f32": every other weight is bf16.
        for k in ("gate", "up", "down", "shared_gate", "shared_up", "shared_down"):
            assert np.array_equal(layer.get(k), bf16_round(W[k]).ravel()), f"{k} not bf16-rounded to nearest even"
            Wr[k] = bf16_round(W[k])
        assert np.array_equal(layer.get("router"), W["router"].ravel())
        assert np.array_equal(layer.get("shared_expert_gate"), W["shared_expert_gate"].ravel())
        rc = ref_config(2)
        r = ref.forward(x, Wr, rc)
        out = layer.forward(x, C.MOE_FORWARD_SAVE)
        compare_forward(layer, r, out, T, what="bf16")
        compare_backward(layer, r, rc, rng.standard_normal((T, H)).astype(np.float32), what="bf16")


def test_bf16_rounds_to_nearest_even(rt):
    # 1 + 2^-8 is halfway between bf16 1 and 1 + 2^-7: ties go to the even mantissa (1.0);
    # 1 + 3*2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: goes to 1 + 2^-6.
    vals = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, -(1 + 2 ** -8)], np.float32)
    want = np.array([1.0, 1 + 2 ** -6, 1 + 2 ** -7, -1.0], np.float32)
    with Layer(rt, **dims(4, 1, 1), top_k=1, storage=C.MOE_DTYPE_BF16) as layer:
        layer.set("gate", vals)
        assert layer.get("gate").tolist() == want.tolist()


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_borrowed_experts(rt, dtype):
    T, H, F, E = 40, 32, 40, 4
    rng, W, x = data(17, T, H, E, F, shared_ffn=16)
    storage = C.MOE_DTYPE_F32 if dtype == "f32" else C.MOE_DTYPE_BF16
    cfg = dict(dims(H, F, E, 16), top_k=2, storage=storage)
    dout = rng.standard_normal((T, H)).astype(np.float32)
    with Layer(rt, **cfg) as owned:
        owned.set_all(W)
        o_owned, dx_owned, g_owned = run_fwd_bwd(owned, x, dout)
    if dtype == "f32":
        arrays = [np.ascontiguousarray(W[k]) for k in ("gate", "up", "down")]
    else:
        arrays = [np.ascontiguousarray(to_bf16_bytes(W[k])) for k in ("gate", "up", "down")]
    with Layer(rt, **cfg) as layer:
        for k in ("router", "shared_gate", "shared_up", "shared_down", "shared_expert_gate"):
            layer.set(k, W[k])
        layer._keep = arrays
        check(C.lib.moe_layer_borrow_experts(layer.h, storage, *(a.ctypes.data for a in arrays)))
        o, dx, g = run_fwd_bwd(layer, x, dout)
        close(o, o_owned, rtol=1e-6, atol=1e-6, what="borrowed forward")
        close(dx, dx_owned, rtol=1e-6, atol=1e-6, what="borrowed dx")
        for k in g:
            close(g[k], g_owned[k], rtol=1e-6, atol=1e-6, what=f"borrowed grad {k}")
        Wr = dict(W)
        if dtype == "bf16":
            for k in ("gate", "up", "down", "shared_gate", "shared_up", "shared_down"):
                Wr[k] = bf16_round(W[k])
        close(o, ref.forward(x, Wr, ref_config(2)).out, what="borrowed vs reference")
        assert np.array_equal(layer.get("gate"), Wr["gate"].ravel())
        st = C.lib.moe_layer_set_weight(layer.h, C.MOE_WEIGHT_GATE, -1, fptr(W["gate"]), W["gate"].size)
        assert st == C.MOE_ERR_INVALID_ARGUMENT
        assert "borrow" in last_error().lower(), last_error()
        st = C.lib.moe_layer_borrow_experts(layer.h, C.MOE_DTYPE_F16, *(a.ctypes.data for a in arrays))
        assert st == C.MOE_ERR_UNSUPPORTED
        st = C.lib.moe_layer_borrow_experts(layer.h, storage, None, arrays[1].ctypes.data, arrays[2].ctypes.data)
        assert st == C.MOE_ERR_NULL_POINTER and "gate" in last_error()
        # still works with the memory it borrowed
        close(layer.forward(x), o_owned, rtol=1e-6, atol=1e-6, what="borrowed forward after errors")


def test_borrowing_releases_owned_expert_memory(rt):
    """Without a shared expert, borrowing leaves no owned expert memory behind."""
    T, H, F, E = 24, 32, 40, 4
    rng, W, x = data(23, T, H, E, F)
    with Layer(rt, **dims(H, F, E), top_k=2) as layer:
        layer.set_all(W)
        expected = layer.forward(x)
        assert layer.stats()[0].weight_bytes == 4 * 3 * H * E * F
        arrays = [np.ascontiguousarray(W[k]) for k in ("gate", "up", "down")]
        layer._keep = arrays
        check(C.lib.moe_layer_borrow_experts(layer.h, C.MOE_DTYPE_F32, *(a.ctypes.data for a in arrays)))
        close(layer.forward(x), expected, rtol=1e-6, atol=1e-6, what="forward on borrowed weights")
        s, _ = layer.stats()
        assert s.weight_bytes == 0 and s.bound_bytes == 0, (s.weight_bytes, s.bound_bytes)


@pytest.mark.parametrize("storage", [C.MOE_DTYPE_F32, C.MOE_DTYPE_BF16], ids=["f32", "bf16"])
@pytest.mark.parametrize("routing", [0, 2, 4])
def test_odd_shapes(rt, routing, storage):
    """Sizes that are not multiples of any vector width or tile, and more rows than a tile."""
    T, H, F, E, Fs = 301, 37, 23, 3, 11
    rng, W, x = data(600 + routing, T, H, E, F, shared_ffn=Fs)
    if storage == C.MOE_DTYPE_BF16:
        for k in ("gate", "up", "down", "shared_gate", "shared_up", "shared_down"):
            W[k] = bf16_round(W[k])
    cfg = dict(top_k=2, routing=routing, storage=storage, aux_loss_coef=0.1, z_loss_coef=0.01)
    layer, r, rc, out = run_case(rt, W, x, cfg, flags=C.MOE_FORWARD_SAVE)
    with layer:
        compare_forward(layer, r, out, T, what="odd shapes")
        compare_backward(layer, r, rc, rng.standard_normal((T, H)).astype(np.float32), what="odd shapes")


def test_set_weight_per_expert(rt):
    T, H, F, E = 20, 16, 24, 3
    rng, W, x = data(22, T, H, E, F, shared_ffn=8)
    with Layer(rt, **dims(H, F, E, 8), top_k=2) as layer:
        for k, v in W.items():
            if k in ("gate", "up", "down"):
                for e in range(E):
                    assert layer.count(k, e) == v[e].size
                    layer.set(k, v[e], e)
            else:
                layer.set(k, v)
        for k, v in W.items():
            assert np.array_equal(layer.get(k), v.ravel()), k
            if k in ("gate", "up", "down"):
                for e in range(E):
                    assert np.array_equal(layer.get(k, e), v[e].ravel()), (k, e)
        close(layer.forward(x), ref.forward(x, W, ref_config(2)).out, what="per-expert weights")
        # one expert changed, the others kept
        layer.set("down", np.zeros((H, F), np.float32), 1)
        W["down"][1] = 0
        assert np.array_equal(layer.get("down"), W["down"].ravel())


def test_stats_memory():
    H, F, E, Fs = 32, 64, 4, 16
    r2 = Runtime(threads=4, synthetic=SYNTHETIC)
    try:
        for runtime, synthetic in ((None, False), (r2, True)):
            runtime = runtime or Runtime(threads=2)
            for storage, b in ((C.MOE_DTYPE_F32, 4), (C.MOE_DTYPE_BF16, 2)):
                for pl in PLACEMENTS.values():
                    with Layer(runtime, **dims(H, F, E, Fs), top_k=2, storage=storage,
                               placement=pl) as layer:
                        check(C.lib.moe_layer_forward(layer.h, None, 0, None, 0))
                        s, _ = layer.stats()
                        assert s.weight_bytes in (b * 3 * H * E * F, b * 3 * H * (E * F + Fs)), s.weight_bytes
                        assert s.bound_bytes <= s.weight_bytes
                        if synthetic or pl == C.MOE_PLACEMENT_NONE:
                            assert s.bound_bytes == 0, (synthetic, pl, s.bound_bytes)
            if not synthetic:
                runtime.close()
    finally:
        r2.close()


def test_f32_layer_borrows_bf16(rt):
    T, H, F, E = 30, 32, 40, 4
    rng, W, x = data(23, T, H, E, F, shared_ffn=16)
    arrays = [np.ascontiguousarray(to_bf16_bytes(W[k])) for k in ("gate", "up", "down")]
    with Layer(rt, **dims(H, F, E, 16), top_k=2) as layer:
        layer.set_all(W)
        layer._keep = arrays
        check(C.lib.moe_layer_borrow_experts(layer.h, C.MOE_DTYPE_BF16, *(a.ctypes.data for a in arrays)))
        Wr = dict(W)
        for k in ("gate", "up", "down"):
            Wr[k] = bf16_round(W[k])
        rc = ref_config(2)
        r = ref.forward(x, Wr, rc)
        out = layer.forward(x, C.MOE_FORWARD_SAVE)
        compare_forward(layer, r, out, T, what="f32 layer, bf16 borrowed")
        compare_backward(layer, r, rc, rng.standard_normal((T, H)).astype(np.float32), what="bf16 borrowed")


def test_bf16_special_values(rt):
    bits = np.array([0x7F800000, 0xFF800000, 0x7FC00000, 0x7FFFFFFF, 0xFFFFFFFF, 0x7F800001,  # inf, nan
                     0x7F7FC99E,  # 3.4e38: rounds up to inf
                     0x7F7F0000,  # the largest finite bf16
                     0x000116C2, 0x800116C2, 0x00000001, 0x00008000, 0x00018000,  # subnormals, ties
                     0x00000000, 0x80000000], np.uint32)
    vals = bits.view(np.float32)
    with Layer(rt, **dims(len(vals), 1, 1), top_k=1, storage=C.MOE_DTYPE_BF16) as layer:
        layer.set("gate", vals)
        got = layer.get("gate")
    gb = got.view(np.uint32)
    assert np.isnan(got[[2, 3, 4, 5]]).all(), [hex(v) for v in gb]
    assert (np.signbit(got[[3, 4]]) == [False, True]).all()
    want = {0: 0x7F800000, 1: 0xFF800000, 6: 0x7F800000, 7: 0x7F7F0000, 8: 0x00010000, 9: 0x80010000,
            10: 0, 11: 0, 12: 0x00020000, 13: 0, 14: 0x80000000}
    for i, w in want.items():
        assert gb[i] == w, f"{hex(bits[i])} -> {hex(gb[i])}, want {hex(w)}"
    assert (gb & 0xFFFF == 0).all()


@pytest.mark.parametrize("expert_choice", [0, 1])
@pytest.mark.parametrize("routing", [0, 1, 2])
def test_large_logits_are_stable(rt, routing, expert_choice):
    """Router logits of several hundred: softmax and logsumexp must not overflow in f32."""
    T, H, F, E = 40, 16, 16, 4
    rng, W, x = data(31, T, H, E, F, router_scale=200.0)
    cfg = dict(top_k=2, routing=routing, expert_choice=expert_choice, aux_loss_coef=0.1, z_loss_coef=0.01)
    layer, r, rc, out = run_case(rt, W, x, cfg, flags=C.MOE_FORWARD_SAVE)
    with layer:
        assert np.abs(r.cache["logits"]).max() > 200
        compare_forward(layer, r, out, T, what="large logits")
        compare_backward(layer, r, rc, rng.standard_normal((T, H)).astype(np.float32), what="large logits")


@pytest.mark.parametrize("on", ["machine", "synthetic"])
@pytest.mark.parametrize("routing", ROUTINGS, ids=ROUTING_NAMES)
def test_exact_ties(request, routing, on):
    """Integer data gives exactly equal logits: ties go to the lower expert index (token choice)
    and to the lower token index (expert choice)."""
    runtime = request.getfixturevalue("rt" if on == "machine" else "rt2")
    T, H, F, E = 150, 8, 16, 6
    rng = np.random.default_rng(3)
    W = ref.random_weights(rng, hidden=H, ffn=F, experts=E)
    W["router"] = rng.integers(-2, 3, (E, H)).astype(np.float32)
    W["router"][2] = W["router"][1]
    W["router"][4] = W["router"][1]
    x = rng.integers(-2, 3, (T, H)).astype(np.float32)
    x[50:100] = x[0:50]
    for k in (1, 2, 3):
        for ec, cf in ((0, 0.0), (0, 0.5), (1, 0.0), (1, 0.5)):
            cfg = dict(top_k=k, routing=routing, expert_choice=ec, capacity_factor=cf)
            layer, r, rc, out = run_case(runtime, W, x, cfg, flags=C.MOE_FORWARD_SAVE, check_margin=False)
            with layer:
                what = f"ties k={k} expert_choice={ec} cf={cf}"
                compare_forward(layer, r, out, T, what=what)
                compare_backward(layer, r, rc, rng.standard_normal((T, H)).astype(np.float32), what=what)


@pytest.mark.parametrize("placement", list(PLACEMENTS_))
def test_many_tokens(rt2, placement):
    T, H, F, E = 2500, 48, 72, 3
    rng, W, x = data(9, T, H, E, F, shared_ffn=40)
    cfg = dict(top_k=2, routing=0, placement=PLACEMENTS_[placement], capacity_factor=0.9)
    layer, r, rc, out = run_case(rt2, W, x, cfg, flags=C.MOE_FORWARD_SAVE)
    with layer:
        compare_forward(layer, r, out, T, what="many tokens")
        compare_backward(layer, r, rc, rng.standard_normal((T, H)).astype(np.float32), what="many tokens")


# --------------------------------------------------------------------------- placement on a synthetic topology


SYNTHETIC = "pack:2 [numa] core:2 pu:1"


@pytest.fixture(scope="module")
def rt2():
    r = Runtime(threads=4, synthetic=SYNTHETIC)
    yield r
    r.close()


def test_synthetic_runtime_info(rt2):
    i = rt2.info()
    assert (i.numa_nodes, i.cores, i.pus, i.workers) == (2, 4, 4, 4)
    assert (i.is_this_system, i.workers_pinned, i.memory_binding) == (0, 0, 0)
    assert i.blas_threads == 1 and i.blas_core


def test_describe_null_buffer_with_capacity(rt2):
    """"buffer (which may be NULL when capacity is 0)": NULL with a non-zero capacity is a NULL pointer,
    whatever the capacity."""
    st = C.lib.moe_runtime_describe(rt2.h, None, C.MOE_TEXT_JSON, None, 10, None)
    assert st == C.MOE_ERR_NULL_POINTER, (st, last_error())


def test_runtime_defaults(tmp_path):
    r = Runtime(threads=0)
    try:
        i = r.info()
        assert i.workers == i.cores and i.is_this_system == 1
    finally:
        r.close()
    # NULL params: all defaults
    h = ctypes.c_void_p()
    check(C.lib.moe_runtime_create(ctypes.byref(h), None))
    C.lib.moe_runtime_free(h)


def test_runtime_unreadable_or_missing_xml(tmp_path):
    """moe_runtime_create: MOE_ERR_IO for a malformed topology XML, MOE_ERR_NOT_FOUND for a missing one."""
    p = params(C.moe_runtime_params)
    h = ctypes.c_void_p()
    path = str(tmp_path / "missing.xml").encode()
    p.topology_xml = path
    bad = tmp_path / "bad.xml"
    bad.write_text("not xml <<")
    p.topology_xml = str(bad).encode()
    expect(C.lib.moe_runtime_create(ctypes.byref(h), p), C.MOE_ERR_IO, "bad.xml")
    p.topology_xml = path
    st = C.lib.moe_runtime_create(ctypes.byref(h), p)
    assert "missing.xml" in last_error()
    assert st == C.MOE_ERR_NOT_FOUND, (st, last_error())


def test_this_machine_runtime_info(rt):
    i = rt.info()
    assert i.is_this_system == 1 and i.workers == 2 and i.numa_nodes >= 1 and i.blas_threads == 1
    text = rt.describe(None, C.MOE_TEXT_PLAIN)
    assert "worker" in text
    j = json.loads(rt.describe(None))
    assert len(j["workers"]) == 2


PLACEMENTS = PLACEMENTS_


@pytest.mark.parametrize("F", [64, 50])
@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_placement_forward_backward(rt2, placement, F):
    T, H, E = 57, 32, 4
    rng, W, x = data(18 + F, T, H, E, F, shared_ffn=24)
    cfg = dict(top_k=2, routing=0, placement=PLACEMENTS[placement], aux_loss_coef=0.2, z_loss_coef=0.05)
    layer, r, rc, out = run_case(rt2, W, x, cfg, flags=C.MOE_FORWARD_SAVE)
    with layer:
        assert layer.config.placement == PLACEMENTS[placement]
        compare_forward(layer, r, out, T, what=placement)
        compare_backward(layer, r, rc, rng.standard_normal((T, H)).astype(np.float32), what=placement)
        for k in ("gate", "up", "down"):
            assert np.array_equal(layer.get(k), W[k].ravel()), f"{k} read back under {placement}"
        for e in range(E):
            assert np.array_equal(layer.get("down", e), W["down"][e].ravel())


def test_placement_default_comes_from_runtime():
    r = Runtime(threads=4, synthetic=SYNTHETIC, placement=C.MOE_PLACEMENT_EXPERT)
    try:
        with Layer(r, **dims(8, 8, 2), top_k=1) as layer:
            assert layer.config.placement == C.MOE_PLACEMENT_EXPERT
    finally:
        r.close()


@pytest.mark.parametrize("shared", [0, 24])
@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_describe_json_plan(rt2, placement, shared):
    E, F = 4, 64
    cfg = layer_config(32, F, E, 2, placement=PLACEMENTS[placement], shared_expert_intermediate_size=shared)
    j = json.loads(rt2.describe(cfg))
    assert j["layer"]["hidden_size"] == 32 and j["layer"]["moe_intermediate_size"] == F
    assert j["layer"]["shared_expert_intermediate_size"] == shared
    assert len(j["nodes"]) == 2
    assert len(j["workers"]) == 4 and not any(w["pinned"] for w in j["workers"])
    assert j["binding"]["thread_pinning_effective"] is False
    assert j["binding"]["memory_binding_effective"] is False
    plan = j["placement"]
    assert plan["policy"] == placement
    cover = {e: [] for e in range(E + (1 if shared else 0))}  # the shared expert is expert E
    for shard in plan["shards"]:
        for s in shard["slices"]:
            cover[s["expert"]].append((s["ffn_begin"], s["ffn_end"]))
    workers = sorted(w for shard in plan["shards"] for w in shard["workers"])
    assert workers == [0, 1, 2, 3], workers
    for e, ranges in cover.items():
        ranges.sort()
        size = F if e < E else shared
        assert ranges and ranges[0][0] == 0 and ranges[-1][1] == size, (e, ranges)
        for (a, b), (c, d) in zip(ranges, ranges[1:]):
            assert b == c, f"expert {e} ranges {ranges} overlap or leave a gap"
    if placement == "row-slice":
        assert plan["splits_experts"] is True
        assert all(cover[e] == [(0, 32), (32, 64)] for e in range(E)), cover
    if placement == "expert":
        assert all(len(r) == 1 for r in cover.values())
        assert len({s["node"] for s in plan["shards"] if s["slices"]}) == 2


def test_describe_buffer_too_small(rt2):
    needed = ctypes.c_size_t(0)
    assert C.lib.moe_runtime_describe(rt2.h, None, C.MOE_TEXT_JSON, None, 0, ctypes.byref(needed)) == C.MOE_OK
    n = needed.value
    assert n > 2
    buf = ctypes.create_string_buffer(b"\x7f" * n, n)
    needed.value = 0
    assert C.lib.moe_runtime_describe(rt2.h, None, C.MOE_TEXT_JSON, buf, n - 1, ctypes.byref(needed)) == \
        C.MOE_ERR_BUFFER_TOO_SMALL and needed.value == n
    assert buf.raw == b"\x7f" * n, "a buffer too small was written into"
    assert C.lib.moe_runtime_describe(rt2.h, None, C.MOE_TEXT_JSON, buf, n, None) == C.MOE_OK
    assert len(buf.value) == n - 1
    json.loads(buf.value)
    assert C.lib.moe_runtime_describe(None, None, C.MOE_TEXT_JSON, buf, n, None) == C.MOE_ERR_NULL_POINTER
    assert C.lib.moe_runtime_describe(rt2.h, None, C.MOE_TEXT_JSON, None, n + 10, None) == C.MOE_ERR_NULL_POINTER
    bad = layer_config(0, 8, 2, 1)
    expect(C.lib.moe_runtime_describe(rt2.h, bad, C.MOE_TEXT_JSON, buf, n, None), C.MOE_ERR_INVALID_ARGUMENT, "hidden")
    assert C.lib.moe_runtime_describe(rt2.h, None, 7, buf, n, None) == C.MOE_ERR_INVALID_ARGUMENT
    assert "format" in last_error()


# --------------------------------------------------------------------------- router jitter


def test_jitter(rt):
    T, H, F, E = 40, 32, 40, 6
    rng, W, x = data(19, T, H, E, F)
    with Layer(rt, **dims(H, F, E), top_k=2, jitter=0.1, seed=3) as layer:
        layer.set_all(W)
        train = C.MOE_FORWARD_TRAIN
        check(C.lib.moe_layer_set_noise_step(layer.h, 5))
        a = layer.forward(x, train)
        ra = layer.routing(T)
        check(C.lib.moe_layer_set_noise_step(layer.h, 5))
        b = layer.forward(x, train)
        assert np.array_equal(a, b)
        c = layer.forward(x, train)  # the step advanced to 6
        check(C.lib.moe_layer_set_noise_step(layer.h, 6))
        d = layer.forward(x, train)
        assert np.array_equal(c, d)
        assert not np.array_equal(a, c)
        r = ref.forward(x, W, ref_config(2))
        assert not np.allclose(ra, r.combine, atol=1e-6), "jitter changed nothing"
        plain = layer.forward(x, 0)
        compare_forward(layer, r, plain, T, what="no TRAIN flag")
        plain2 = layer.forward(x, C.MOE_FORWARD_SAVE)
        assert np.array_equal(plain, plain2)
    # a different seed gives different noise
    with Layer(rt, **dims(H, F, E), top_k=2, jitter=0.1, seed=4) as other:
        other.set_all(W)
        check(C.lib.moe_layer_set_noise_step(other.h, 5))
        assert not np.array_equal(other.forward(x, train), a)


@pytest.mark.parametrize("routing", [0, 3])
def test_jitter_backward_finite_differences(rt, routing):
    T, H, F, E = 12, 16, 24, 4
    rng, W, x = data(20 + routing, T, H, E, F, shared_ffn=8, router_scale=3.0)
    with Layer(rt, **dims(H, F, E, 8), top_k=2, routing=routing, jitter=0.3, seed=9,
               aux_loss_coef=0.1, z_loss_coef=0.05) as layer:
        layer.set_all(W)
        R = rng.standard_normal((T, H))
        library_fd_check(layer, x, R, float(np.float32(0.1)), float(np.float32(0.05)), ["router", "gate"], rng,
                         n_entries=8, flags=C.MOE_FORWARD_TRAIN, noise_step=17)


def test_jitter_multiplies_router_input(rt):
    """H = 1: logits_e = x * n * w_e, so the routing reveals each token's noise n."""
    T, E, F = 200, 4, 8
    rng = np.random.default_rng(24)
    W = ref.random_weights(rng, hidden=1, ffn=F, experts=E)
    W["router"] = np.array([[2.0], [1.0], [0.0], [-1.0]], np.float32)
    x = (1 + rng.random((T, 1))).astype(np.float32)  # 1..2, away from 0
    jit = 0.2
    with Layer(rt, **dims(1, F, E), top_k=E, routing=0, jitter=jit, seed=5) as layer:
        layer.set_all(W)
        check(C.lib.moe_layer_set_noise_step(layer.h, 3))
        out = layer.forward(x, C.MOE_FORWARD_TRAIN)
        comb = layer.routing(T).astype(np.float64)
        n = np.log(comb[:, 0] / comb[:, 1]) / x[:, 0]  # (w0 - w1) = 1
        assert (n > 1 - jit - 1e-4).all() and (n < 1 + jit + 1e-4).all(), (n.min(), n.max())
        assert n.max() - n.min() > jit, "noise barely varies across tokens"
        assert abs(n.mean() - 1) < 0.05
        # the experts see the un-jittered x
        want = np.zeros((T, 1))
        for e in range(E):
            y, _ = ref._ffn(x.astype(np.float64), *(W[k][e].astype(np.float64) for k in ("gate", "up", "down")))
            want += comb[:, e:e + 1] * y
        close(out, want, what="jittered output")


def test_noise_step_advances_only_in_training(rt):
    T, H, F, E = 20, 16, 16, 4
    rng, W, x = data(25, T, H, E, F)
    with Layer(rt, **dims(H, F, E), top_k=2, jitter=0.2, seed=1) as layer:
        layer.set_all(W)
        check(C.lib.moe_layer_set_noise_step(layer.h, 8))
        layer.forward(x, C.MOE_FORWARD_TRAIN)
        layer.forward(x, 0)
        layer.forward(x, C.MOE_FORWARD_SAVE)
        a = layer.forward(x, C.MOE_FORWARD_TRAIN)  # step 9
        check(C.lib.moe_layer_set_noise_step(layer.h, 9))
        b = layer.forward(x, C.MOE_FORWARD_TRAIN)
        assert np.array_equal(a, b)


def test_backward_uses_the_saved_forward(rt):
    """Backward is "of the last forward run with MOE_FORWARD_SAVE", even after plain forwards."""
    T, H, F, E = 24, 32, 40, 4
    rng, W, x = data(26, T, H, E, F, shared_ffn=16)
    cfg = dict(top_k=2, routing=0, aux_loss_coef=0.2, z_loss_coef=0.05)
    layer, r, rc, out = run_case(rt, W, x, cfg, flags=C.MOE_FORWARD_SAVE)
    with layer:
        x2 = rng.standard_normal((40, H)).astype(np.float32)
        layer.forward(x2, 0)
        compare_backward(layer, r, rc, rng.standard_normal((T, H)).astype(np.float32), what="after plain forward")


def test_layers_on_one_runtime_from_several_threads(rt):
    import threading
    T, H, F, E = 64, 32, 48, 4
    cases = []
    for i in range(3):
        rng, W, x = data(27 + i, T, H, E, F, shared_ffn=16)
        layer = Layer(rt, **dims(H, F, E, 16), top_k=2)
        layer.set_all(W)
        dout = rng.standard_normal((T, H)).astype(np.float32)
        want = run_fwd_bwd(layer, x, dout)
        cases.append((layer, x, dout, want))
    errors = []

    def work(layer, x, dout, want):
        try:
            for _ in range(15):
                got = run_fwd_bwd(layer, x, dout)
                assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
                for k in want[2]:
                    assert np.array_equal(got[2][k], want[2][k]), k
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=c) for c in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in cases:
        c[0].close()
    assert not errors, errors


# --------------------------------------------------------------------------- errors


def create_status(rt, struct_size=None, **kw):
    base = dict(hidden_size=8, moe_intermediate_size=8, num_experts=4, top_k=2)
    base.update(kw)
    c = layer_config(**base)
    if struct_size is not None:
        c.struct_size = struct_size
    h = ctypes.c_void_p()
    st = C.lib.moe_layer_create(ctypes.byref(h), rt.h, c)
    if st == C.MOE_OK:
        C.lib.moe_layer_free(h)
    return st


@pytest.mark.parametrize("kw,code,fragment", [
    (dict(hidden_size=0), C.MOE_ERR_INVALID_ARGUMENT, "hidden_size is 0"),
    (dict(moe_intermediate_size=0), C.MOE_ERR_INVALID_ARGUMENT, "moe_intermediate_size is 0"),
    (dict(num_experts=0), C.MOE_ERR_INVALID_ARGUMENT, "experts"),
    (dict(top_k=0), C.MOE_ERR_INVALID_ARGUMENT, "top_k"),
    (dict(top_k=5), C.MOE_ERR_INVALID_ARGUMENT, "top_k"),
    (dict(capacity_factor=-0.5), C.MOE_ERR_INVALID_ARGUMENT, "capacity_factor"),
    (dict(capacity_factor=float("nan")), C.MOE_ERR_INVALID_ARGUMENT, "capacity_factor"),
    (dict(storage=C.MOE_DTYPE_F16), C.MOE_ERR_UNSUPPORTED, "storage"),
    (dict(storage=C.MOE_DTYPE_Q8_0), C.MOE_ERR_UNSUPPORTED, "blocks of 32"),
    (dict(routing=5), C.MOE_ERR_INVALID_ARGUMENT, "routing"),
    (dict(routing=-1), C.MOE_ERR_INVALID_ARGUMENT, "routing"),
    (dict(placement=4), C.MOE_ERR_INVALID_ARGUMENT, "placement"),
    (dict(placement=-2), C.MOE_ERR_INVALID_ARGUMENT, "placement"),
    (dict(jitter=-0.1), C.MOE_ERR_INVALID_ARGUMENT, "jitter"),
    (dict(struct_size=8), C.MOE_ERR_INVALID_ARGUMENT, "struct_size"),
])
def test_create_rejects(rt, kw, code, fragment):
    expect(create_status(rt, **kw), code, fragment)


def test_null_pointers_and_struct_sizes(rt):
    c = layer_config(8, 8, 4, 2)
    h = ctypes.c_void_p()
    expect(C.lib.moe_layer_create(ctypes.byref(h), None, c), C.MOE_ERR_NULL_POINTER, "runtime")
    expect(C.lib.moe_layer_create(None, rt.h, c), C.MOE_ERR_NULL_POINTER, "out")
    expect(C.lib.moe_layer_create(ctypes.byref(h), rt.h, None), C.MOE_ERR_NULL_POINTER, "config")
    expect(C.lib.moe_runtime_create(None, None), C.MOE_ERR_NULL_POINTER, "out")
    expect(C.lib.moe_layer_load(ctypes.byref(h), None, b"x", 0, None), C.MOE_ERR_NULL_POINTER, "runtime")
    expect(C.lib.moe_layer_load(ctypes.byref(h), rt.h, None, 0, None), C.MOE_ERR_NULL_POINTER, "checkpoint_path")
    info = result(C.moe_runtime_info)
    expect(C.lib.moe_runtime_get_info(info, None), C.MOE_ERR_NULL_POINTER, "runtime")
    expect(C.lib.moe_runtime_get_info(None, rt.h), C.MOE_ERR_NULL_POINTER, "out")
    info.struct_size = 4
    expect(C.lib.moe_runtime_get_info(info, rt.h), C.MOE_ERR_INVALID_ARGUMENT, "struct_size")
    p = params(C.moe_runtime_params)
    p.struct_size = 3
    expect(C.lib.moe_runtime_create(ctypes.byref(h), p), C.MOE_ERR_INVALID_ARGUMENT, "struct_size")
    p = params(C.moe_runtime_params, threads=5000)
    expect(C.lib.moe_runtime_create(ctypes.byref(h), p), C.MOE_ERR_INVALID_ARGUMENT, "threads")
    for placement in (4, 9, -2):
        p = params(C.moe_runtime_params, placement=placement)
        expect(C.lib.moe_runtime_create(ctypes.byref(h), p), C.MOE_ERR_INVALID_ARGUMENT, "placement")
    p = params(C.moe_runtime_params, topology_synthetic=b"this is not a topology")
    expect(C.lib.moe_runtime_create(ctypes.byref(h), p), C.MOE_ERR_INVALID_ARGUMENT, "synthetic")
    p.topology_xml = b"/nonexistent.xml"
    expect(C.lib.moe_runtime_create(ctypes.byref(h), p), C.MOE_ERR_INVALID_ARGUMENT, "topology_xml")
    # NULL is ignored by the free functions; the init functions answer it with a status
    C.lib.moe_runtime_free(None)
    C.lib.moe_layer_free(None)
    expect(C.lib.moe_runtime_params_init(None, ctypes.sizeof(p)), C.MOE_ERR_NULL_POINTER, "params")
    expect(C.lib.moe_layer_config_init(None, ctypes.sizeof(c)), C.MOE_ERR_NULL_POINTER, "params")
    # defaults
    p = params(C.moe_runtime_params)
    assert p.struct_size == ctypes.sizeof(p) and p.threads == 0 and p.pin != 0
    assert p.placement == C.MOE_PLACEMENT_DEFAULT and p.topology_synthetic is None and p.topology_xml is None
    c = params(C.moe_layer_config)
    assert c.struct_size == ctypes.sizeof(c)
    assert (c.hidden_size, c.moe_intermediate_size, c.num_experts, c.top_k) == (0, 0, 0, 0)
    assert c.routing == C.MOE_ROUTING_SOFTMAX_TOPK_RENORM and c.capacity_factor == 0 and c.expert_choice == 0
    assert c.shared_expert_intermediate_size == 0
    assert c.storage == C.MOE_DTYPE_F32 and c.placement == C.MOE_PLACEMENT_DEFAULT and c.jitter == 0 and c.seed == 0
    assert c.aux_loss_coef == pytest.approx(0.01) and c.z_loss_coef == pytest.approx(0.001)


def test_layer_call_errors(rt):
    T, H, F, E = 4, 8, 8, 4
    lib, NULL, INVALID = C.lib, C.MOE_ERR_NULL_POINTER, C.MOE_ERR_INVALID_ARGUMENT
    GATE, UP, DOWN = C.MOE_WEIGHT_GATE, C.MOE_WEIGHT_UP, C.MOE_WEIGHT_DOWN
    with Layer(rt, **dims(H, F, E), top_k=2) as layer:
        x = np.ones((T, H), np.float32)
        out = np.zeros((T, H), np.float32)
        L = layer.h
        expect(lib.moe_layer_forward(None, fptr(x), T, fptr(out), 0), NULL, "layer")
        expect(lib.moe_layer_forward(L, None, T, fptr(out), 0), NULL, "x")
        expect(lib.moe_layer_forward(L, fptr(x), T, None, 0), NULL, "out")
        expect(lib.moe_layer_forward(L, fptr(x), T, fptr(out), 4), INVALID, "flags")
        expect(lib.moe_layer_forward(L, fptr(x), T, fptr(out), 0x80000000), INVALID, "flags")
        expect(lib.moe_layer_forward(L, fptr(x), (1 << 24) + 1, fptr(out), 0), INVALID, "tokens")
        # backward without a saved forward
        check(lib.moe_layer_forward(L, fptr(x), T, fptr(out), 0))
        expect(lib.moe_layer_backward(L, fptr(out), fptr(x.copy())), INVALID, "forward")
        check(lib.moe_layer_forward(L, fptr(x), T, fptr(out), C.MOE_FORWARD_SAVE))
        expect(lib.moe_layer_backward(L, None, fptr(x.copy())), NULL, "grad_out")
        expect(lib.moe_layer_backward(L, fptr(out), None), NULL, "grad_x")
        expect(lib.moe_layer_backward(None, fptr(out), fptr(x.copy())), NULL, "layer")
        # weights
        n = ctypes.c_size_t()
        expect(lib.moe_layer_weight_count(None, L, GATE, C.MOE_ALL_EXPERTS), NULL, "out")
        expect(lib.moe_layer_weight_count(ctypes.byref(n), None, GATE, C.MOE_ALL_EXPERTS), NULL, "layer")
        check(lib.moe_layer_weight_count(ctypes.byref(n), L, GATE, C.MOE_ALL_EXPERTS))
        assert n.value == E * F * H
        check(lib.moe_layer_weight_count(ctypes.byref(n), L, DOWN, 3))
        assert n.value == H * F
        check(lib.moe_layer_weight_count(ctypes.byref(n), L, C.MOE_WEIGHT_ROUTER, C.MOE_ALL_EXPERTS))
        assert n.value == E * H
        for w in (C.MOE_WEIGHT_SHARED_GATE, C.MOE_WEIGHT_SHARED_UP, C.MOE_WEIGHT_SHARED_DOWN,
                  C.MOE_WEIGHT_SHARED_EXPERT_GATE):
            expect(lib.moe_layer_weight_count(ctypes.byref(n), L, w, -1), INVALID, "shared")
        expect(lib.moe_layer_weight_count(ctypes.byref(n), L, 8, -1), INVALID, "weight")
        expect(lib.moe_layer_weight_count(ctypes.byref(n), L, GATE, E), INVALID, "expert")
        expect(lib.moe_layer_weight_count(ctypes.byref(n), L, GATE, -2), INVALID, "expert")
        expect(lib.moe_layer_weight_count(ctypes.byref(n), L, C.MOE_WEIGHT_ROUTER, 0), INVALID, "expert")
        buf = np.zeros(E * F * H, np.float32)
        expect(lib.moe_layer_set_weight(L, GATE, -1, fptr(buf), buf.size - 1), C.MOE_ERR_SHAPE, "count")
        expect(lib.moe_layer_set_weight(L, GATE, 0, fptr(buf), buf.size), C.MOE_ERR_SHAPE, "count")
        expect(lib.moe_layer_set_weight(L, GATE, -1, None, buf.size), NULL, "data")
        expect(lib.moe_layer_set_weight(None, GATE, -1, fptr(buf), buf.size), NULL, "layer")
        expect(lib.moe_layer_set_weight(L, GATE, E, fptr(buf), F * H), INVALID, "expert")
        expect(lib.moe_layer_set_weight(L, C.MOE_WEIGHT_SHARED_EXPERT_GATE, -1, fptr(buf), H), INVALID, "shared")
        needed = ctypes.c_size_t(0)
        for get in (lib.moe_layer_get_weight, lib.moe_layer_get_grad):
            expect(get(L, GATE, -1, fptr(buf), 10, ctypes.byref(needed)), C.MOE_ERR_BUFFER_TOO_SMALL,
                   f"holds 10 floats but {E * F * H} are needed")
            assert needed.value == E * F * H
            expect(get(L, GATE, -1, None, buf.size, None), NULL, "out")
            expect(get(L, UP, E, fptr(buf), buf.size, None), INVALID, "expert")
            expect(get(L, DOWN, 7, fptr(buf), buf.size, None), INVALID, "expert")
            expect(get(None, GATE, -1, fptr(buf), buf.size, None), NULL, "layer")
        expect(lib.moe_layer_zero_grad(None), NULL, "layer")
        expect(lib.moe_layer_set_noise_step(None, 1), NULL, "layer")
        expect(lib.moe_layer_init_random(None, 1, 0.1), NULL, "layer")
        expect(lib.moe_layer_init_random(L, 1, -1.0), INVALID, "std")
        expect(lib.moe_layer_borrow_experts(None, C.MOE_DTYPE_F32, buf.ctypes.data, buf.ctypes.data,
                                            buf.ctypes.data), NULL, "layer")
        # stats / routing / config
        s = C.moe_layer_stats()
        s.struct_size = 8
        expect(lib.moe_layer_get_stats(s, L, None, 0, None), INVALID, "struct_size")
        expect(lib.moe_layer_get_stats(None, L, None, 0, None), NULL, "out")
        s.struct_size = ctypes.sizeof(s)
        expect(lib.moe_layer_get_stats(s, None, None, 0, None), NULL, "layer")
        check(lib.moe_layer_get_stats(s, L, None, 0, None))
        assert s.tokens == T
        # too small for E counts: an error, and neither the counts nor the stats are written
        tpe = (ctypes.c_uint64 * 2)(99, 99)
        s = C.moe_layer_stats()
        s.struct_size = ctypes.sizeof(s)
        s.tokens = 12345
        expect(lib.moe_layer_get_stats(s, L, tpe, 1, ctypes.byref(needed)), C.MOE_ERR_BUFFER_TOO_SMALL,
               "are needed")
        assert list(tpe) == [99, 99] and needed.value == E, "get_stats wrote into a buffer too small"
        assert s.tokens == 12345, "get_stats filled its result on an error"
        expect(lib.moe_layer_get_stats(s, L, None, E, None), NULL, "tokens_per_expert")
        expect(lib.moe_layer_get_routing(L, fptr(buf), T * E - 1, None), C.MOE_ERR_BUFFER_TOO_SMALL,
               "are needed")
        expect(lib.moe_layer_get_routing(L, None, T * E, None), NULL, "out")
        expect(lib.moe_layer_get_routing(None, fptr(buf), T * E, None), NULL, "layer")
        c = C.moe_layer_config()
        c.struct_size = 0
        expect(lib.moe_layer_get_config(c, L), INVALID, "struct_size")
        c.struct_size = ctypes.sizeof(c)
        expect(lib.moe_layer_get_config(None, L), NULL, "out")
        expect(lib.moe_layer_get_config(c, None), NULL, "layer")


def test_shared_weights_on_shared_layer(rt):
    with Layer(rt, **dims(8, 8, 4, 6), top_k=2) as layer:
        assert layer.count("shared_gate") == 48 and layer.count("shared_down") == 48
        assert layer.count("shared_expert_gate") == 8
        n = ctypes.c_size_t()
        expect(C.lib.moe_layer_weight_count(ctypes.byref(n), layer.h, C.MOE_WEIGHT_SHARED_GATE, 0),
               C.MOE_ERR_INVALID_ARGUMENT, "expert")


# --------------------------------------------------------------------------- moe_layer_load


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("dense") / "llama"
    write_hf(d, dense_weights(np.random.default_rng(21), layers=2, hidden=32, ffn=64))
    return d


def load_layer(rt, path, index, overrides=None):
    h = ctypes.c_void_p()
    st = C.lib.moe_layer_load(ctypes.byref(h), rt.h, str(path).encode(), index, overrides)
    return st, h


@pytest.mark.parametrize("fmt,dtype", [("mixtral", "keep"), ("mixtral", "bf16"), ("qwen2-moe", "keep")])
def test_layer_load(rt, dense_dir, tmp_path, fmt, dtype):
    out = tmp_path / fmt
    upcycle(dense_dir, out, num_experts=4, top_k=2, method="copy", format=fmt, router_std=0.5, seed=1,
            dtype=dtype)
    cfgj = json.loads((out / "config.json").read_text())
    t = read_safetensors_dir(out)
    st, h = load_layer(rt, out, 1)
    assert st == C.MOE_OK, last_error()
    with Layer(rt, handle=h) as layer:
        c = layer.config
        assert (c.hidden_size, c.moe_intermediate_size, c.num_experts, c.top_k) == (32, 64, 4, 2)
        p = "model.layers.1."
        if fmt == "mixtral":
            b = p + "block_sparse_moe."
            names = {"gate": "w1", "up": "w3", "down": "w2"}
            W = {"router": t[b + "gate.weight"]}
            for k, n in names.items():
                W[k] = np.stack([t[b + f"experts.{e}.{n}.weight"] for e in range(4)])
            assert c.shared_expert_intermediate_size == 0 and c.routing == C.MOE_ROUTING_SOFTMAX_TOPK_RENORM
        else:
            b = p + "mlp."
            W = {"router": t[b + "gate.weight"]}
            for k in ("gate", "up", "down"):
                W[k] = np.stack([t[b + f"experts.{e}.{k}_proj.weight"] for e in range(4)])
            for k in ("gate", "up", "down"):
                W["shared_" + k] = t[b + f"shared_expert.{k}_proj.weight"]
            W["shared_expert_gate"] = t[b + "shared_expert_gate.weight"].reshape(-1)
            assert c.shared_expert_intermediate_size == W["shared_gate"].shape[0]
            want = C.MOE_ROUTING_SOFTMAX_TOPK_RENORM if cfgj.get("norm_topk_prob") else C.MOE_ROUTING_SOFTMAX_TOPK
            assert c.routing == want
        for k, v in W.items():
            assert np.array_equal(layer.get(k), v.ravel()), k
        want_routing = c.routing
        x = np.random.default_rng(3).standard_normal((25, 32)).astype(np.float32)
        r = ref.forward(x, W, ref_config(2, routing=c.routing))
        out_ = layer.forward(x)
        compare_forward(layer, r, out_, 25, what=f"loaded {fmt}")
    # overrides: placement, storage and loss coefficients are taken, shape is not
    ov = layer_config(1, 1, 1, 1, storage=C.MOE_DTYPE_BF16, placement=C.MOE_PLACEMENT_NONE,
                     aux_loss_coef=0.25, z_loss_coef=0.125, capacity_factor=1.5, expert_choice=1,
                     jitter=0.05, seed=77, routing=C.MOE_ROUTING_SIGMOID_TOPK, shared_expert_intermediate_size=3)
    st, h = load_layer(rt, out, 1, ov)
    assert st == C.MOE_OK, last_error()
    with Layer(rt, handle=h) as layer:
        c = layer.config
        assert (c.hidden_size, c.moe_intermediate_size, c.num_experts, c.top_k, c.storage, c.placement) == (
            32, 64, 4, 2, C.MOE_DTYPE_BF16, C.MOE_PLACEMENT_NONE)
        assert c.aux_loss_coef == pytest.approx(0.25) and c.capacity_factor == pytest.approx(1.5)
        assert c.z_loss_coef == pytest.approx(0.125) and c.jitter == pytest.approx(0.05)
        assert c.expert_choice == 1 and c.seed == 77
        assert c.routing == want_routing, "routing comes from the checkpoint, not the overrides"
        assert c.shared_expert_intermediate_size == (0 if fmt == "mixtral" else W["shared_gate"].shape[0])
        assert np.array_equal(layer.get("gate"), bf16_round(W["gate"]).ravel())
    ov.struct_size = 8
    expect(load_layer(rt, out, 1, ov)[0], C.MOE_ERR_INVALID_ARGUMENT, "struct_size")
    ov = layer_config(1, 1, 1, 1, storage=C.MOE_DTYPE_F16)
    expect(load_layer(rt, out, 1, ov)[0], C.MOE_ERR_UNSUPPORTED, "storage")
    expect(load_layer(rt, out, 2)[0], C.MOE_ERR_INVALID_ARGUMENT, "layer")
    expect(load_layer(rt, out, 1000)[0], C.MOE_ERR_INVALID_ARGUMENT, "layer")


def test_layer_load_rejects_dense(rt, dense_dir, tmp_path):
    expect(load_layer(rt, dense_dir, 0)[0], C.MOE_ERR_INVALID_ARGUMENT, "layer")
    out = tmp_path / "every2"
    upcycle(dense_dir, out, num_experts=4, top_k=1, layers="every:2", format="qwen2-moe")  # layer 0 stays dense
    expect(load_layer(rt, out, 0)[0], C.MOE_ERR_INVALID_ARGUMENT, "layer")
    st, h = load_layer(rt, out, 1)
    assert st == C.MOE_OK, last_error()
    C.lib.moe_layer_free(h)
    st, _ = load_layer(rt, tmp_path / "missing", 0)
    assert st in (C.MOE_ERR_IO, C.MOE_ERR_NOT_FOUND), (st, last_error())
