"""bf16 compute of the MoE layer's expert products (moe_layer_config.compute = MOE_DTYPE_BF16)
through the C ABI: forward and backward against the float64 reference with the same bf16
rounding of every expert product's operands (layer_reference.py, bf16_compute=True), within
the header's tolerance of f32 compute and measurably different from it; the configuration,
the peak, the kernels that run it (AMX tiles, AVX512-BF16 or the fallback, on every kernel path) and
`moeupcycle bench moe --compute`."""
from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import layer_reference as ref
from abi import Layer, Runtime, check, expect, last_error, layer_config, result
from models import CLI, bf16_round
from moeupcycle import _capi as C

HERE = Path(__file__).resolve().parent
H, F, E, K = 48, 80, 4, 2
GRADS = ("router", "gate", "up", "down")
SHARED_GRADS = ("shared_gate", "shared_up", "shared_down", "shared_expert_gate")

# Tolerances, as relative norms ||got - want|| / ||want|| of each output (out, dx, every gradient):
#  - against the bf16-compute reference: f32 sums, and the rare intermediate (a, dy, dg, du) that the
#    library, holding it in f32, rounds to the neighbouring bf16 value of the reference's float64 one;
LIBRARY_VS_BF16_REFERENCE = 5e-4
#  - against f32 compute: each product moves by at most 2^-7 sum_t |a_t||b_t| (the header); through
#    the chained products of a forward (2) and backward (3), for outputs of order 1, within 2^-6.
BF16_VS_F32 = 2.0 ** -6


def data(seed, T, shared):
    rng = np.random.default_rng(seed)
    W = ref.random_weights(rng, hidden=H, ffn=F, experts=E, shared_ffn=shared, router_scale=2.0)
    x = rng.standard_normal((T, H)).astype(np.float32)
    dout = rng.standard_normal((T, H)).astype(np.float32)
    return W, x, dout


def run_layer(rt, W, x, dout, *, compute, storage=C.MOE_DTYPE_F32):
    """out, dx and the gradients of one forward (saved) and backward."""
    shared = W["shared_gate"].shape[0] if "shared_gate" in W else 0
    with Layer(rt, hidden_size=H, moe_intermediate_size=F, num_experts=E, top_k=K,
               shared_expert_intermediate_size=shared, storage=storage, compute=compute) as layer:
        assert layer.config.compute == compute
        layer.set_all(W)
        out = layer.forward(x, C.MOE_FORWARD_SAVE)
        dx = layer.backward(dout)
        names = GRADS + (SHARED_GRADS if shared else ())
        return dict(out=out, dx=dx, **{k: layer.grad(k) for k in names})


def reference(W, x, dout, *, bf16_compute):
    cfg = ref.Config(top_k=K, balance_coef=float(np.float32(0.01)), z_coef=float(np.float32(0.001)))
    r = ref.forward(x, W, cfg, bf16_compute=bf16_compute)
    assert r.plan.margin > 2e-5, "test data has a near tie; change the seed"
    dx, grads = ref.backward(r, cfg, dout)
    return dict(out=r.out, dx=dx, **{k: v for k, v in grads.items()})


def relative(got, want):
    got, want = np.asarray(got, np.float64).ravel(), np.asarray(want, np.float64).ravel()
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


# T = 7: few tokens per expert, where f32 compute streams the weights (the bf16 products run packed).
CASES = [(300, 0, C.MOE_DTYPE_F32), (300, 24, C.MOE_DTYPE_F32), (300, 24, C.MOE_DTYPE_BF16), (7, 24, C.MOE_DTYPE_F32),
         (130, 0, C.MOE_DTYPE_BF16)]


@pytest.mark.parametrize("T,shared,storage", CASES)
def test_forward_backward_match_the_bf16_reference_and_stay_near_f32(rt, T, shared, storage):
    W, x, dout = data(17 + T + shared, T, shared)
    if storage == C.MOE_DTYPE_BF16:
        W = {k: (bf16_round(v).astype(np.float64) if k not in ("router", "shared_expert_gate") else v)
             for k, v in W.items()}
    f32 = run_layer(rt, W, x, dout, compute=C.MOE_DTYPE_F32, storage=storage)
    b16 = run_layer(rt, W, x, dout, compute=C.MOE_DTYPE_BF16, storage=storage)
    want32 = reference(W, x, dout, bf16_compute=False)
    want16 = reference(W, x, dout, bf16_compute=True)
    for k in f32:
        what = f"T={T} shared={shared} storage={storage} {k}"
        e16 = relative(b16[k], want16[k])
        e32 = relative(b16[k], want32[k])
        f32_error = relative(f32[k], want32[k])
        assert e16 <= LIBRARY_VS_BF16_REFERENCE, f"{what}: {e16:.3g} from the bf16 reference"
        assert e32 <= BF16_VS_F32, f"{what}: {e32:.3g} from f32 compute"
        # bf16 compute really rounds: further from f32 than f32 compute's own error, and than the
        # library is from the bf16 reference.
        assert e32 > 5 * max(e16, f32_error), f"{what}: bf16 {e32:.3g} vs f32 {f32_error:.3g}, ref {e16:.3g}"
        assert not np.array_equal(b16[k], f32[k]), what


def test_results_are_repeatable(rt):
    W, x, dout = data(3, 200, 16)
    first = run_layer(rt, W, x, dout, compute=C.MOE_DTYPE_BF16)
    second = run_layer(rt, W, x, dout, compute=C.MOE_DTYPE_BF16)
    for k in first:
        assert np.array_equal(first[k].view(np.uint32), second[k].view(np.uint32)), k


def test_configuration(rt):
    c = result(C.moe_layer_config)
    check(C.lib.moe_layer_config_init(c, ctypes.sizeof(c)))
    assert c.compute == C.MOE_DTYPE_F32
    for bad in (C.MOE_DTYPE_F16, C.MOE_DTYPE_Q8_0, C.MOE_DTYPE_DEFAULT, 99):
        cfg = layer_config(8, 8, 2, 1, compute=bad)
        h = ctypes.c_void_p()
        expect(C.lib.moe_layer_create(ctypes.byref(h), rt.h, cfg), C.MOE_ERR_UNSUPPORTED, "compute")
        assert not h.value
    # A caller built against the 0.1.0 header (no compute field) gets f32 compute.
    cfg = layer_config(8, 8, 2, 1)
    cfg.compute = C.MOE_DTYPE_BF16
    cfg.struct_size = C.moe_layer_config.compute.offset
    h = ctypes.c_void_p()
    check(C.lib.moe_layer_create(ctypes.byref(h), rt.h, cfg))
    with Layer(rt, handle=h) as layer:
        assert layer.config.compute == C.MOE_DTYPE_F32
    # describe names the layer's compute and where bf16 compute runs.
    info = rt.info()
    kernels = info.kernel_bf16.decode()
    assert kernels in ("amx_bf16", "avx512_bf16", "fallback")
    j = json.loads(rt.describe(layer_config(8, 8, 2, 1, compute=C.MOE_DTYPE_BF16)))
    assert j["layer"]["compute"] == "bf16" and j["kernels"]["bf16_compute"] == kernels
    assert j["kernels"]["bf16_compute_reason"]
    assert f"bf16 compute {kernels} (" in rt.describe(None, C.MOE_TEXT_PLAIN)
    # The bf16 peak: AMX tiles where the process runs them (several times the
    # f32 one), else vdpbf16ps where the CPU has AVX512-BF16.
    peak = ctypes.c_double(-1)
    st = C.lib.moe_runtime_measure_peak(rt.h, C.MOE_DTYPE_BF16, 0.02, ctypes.byref(peak))
    if "avx512_bf16" in j["kernels"]["cpu_features"]:
        assert st == C.MOE_OK and peak.value > 0
        if "amx_tiles_granted" in j["kernels"]["cpu_features"]:
            f32 = ctypes.c_double(-1)
            check(C.lib.moe_runtime_measure_peak(rt.h, C.MOE_DTYPE_F32, 0.02, ctypes.byref(f32)))
            assert peak.value > 2 * f32.value, (peak.value, f32.value)
    else:
        assert st == C.MOE_ERR_UNSUPPORTED and "AVX512-BF16" in last_error() and kernels == "fallback"


# --------------------------------------------------------------------------- every kernel path, in child processes


def child_run(out_path):
    """In a child process (kernels chosen by its environment): the layer's bf16 results, saved."""
    W, x, dout = data(29, 160, 16)
    r = Runtime(threads=2)
    results = run_layer(r, W, x, dout, compute=C.MOE_DTYPE_BF16)
    results["kernel_bf16"] = np.array(r.info().kernel_bf16.decode())
    r.close()
    np.savez(out_path, **results)


def in_child(tmp_path, env):
    out = tmp_path / ("r_" + "_".join(f"{k}-{v}" for k, v in sorted(env.items())) + ".npz")
    e = dict(os.environ)
    e.pop("MOEUPCYCLE_KERNELS", None)
    e.pop("MOEUPCYCLE_BF16_KERNELS", None)
    e.update(env)
    code = f"import sys; sys.path[:0] = [{str(HERE)!r}]; import conftest, test_layer_bf16 as t; t.child_run({str(out)!r})"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=300)
    return p, out


def available_paths():
    p = subprocess.run([str(CLI), "topology", "--json"], capture_output=True, text=True, check=True)
    return json.loads(p.stdout)["kernels"]


def test_every_kernel_path_computes_bf16(tmp_path):
    """bf16 compute on AMX tiles, on AVX512-BF16 and on the fallback of every path this CPU runs: all within the
    bound of the bf16 reference, each forced by MOEUPCYCLE_BF16_KERNELS; the choice is reported."""
    k = available_paths()
    W, x, dout = data(29, 160, 16)
    want = reference(W, x, dout, bf16_compute=True)
    runs = [dict(MOEUPCYCLE_KERNELS=p) for p in k["available"]] + [dict(MOEUPCYCLE_BF16_KERNELS="fallback")]
    features = k["cpu_features"]
    amx = "amx_tiles_granted" in features
    # Automatic: AMX tiles where the process runs them, else vdpbf16ps where the CPU runs it, except on Intel
    # cores (half their f32 rate there); only the avx512 kernels (which the openblas path uses for bf16) have them.
    intel = "Intel" in k["cpu_brand"]
    automatic = "amx_bf16" if amx else "avx512_bf16" if "avx512_bf16" in features and not intel else "fallback"
    if "avx512_bf16" in features:
        runs.append(dict(MOEUPCYCLE_BF16_KERNELS="avx512_bf16"))
    if amx:
        runs.append(dict(MOEUPCYCLE_BF16_KERNELS="amx_bf16"))
    for env in runs:
        p, out = in_child(tmp_path, env)
        assert p.returncode == 0, (env, p.stderr)
        got = np.load(out)
        path = env.get("MOEUPCYCLE_KERNELS", k["path"])
        wanted = env.get("MOEUPCYCLE_BF16_KERNELS", automatic)
        assert str(got["kernel_bf16"]) == (wanted if path in ("avx512", "openblas") else "fallback"), env
        for name, w in want.items():
            assert relative(got[name], w) <= LIBRARY_VS_BF16_REFERENCE, (env, name)
    assert k["bf16_compute"] == (automatic if k["path"] in ("avx512", "openblas") else "fallback")


@pytest.mark.parametrize("value,fragment", [("bogus", "is not a bf16 kernel choice"),
                                            ("avx512_bf16", "does not support AVX512-BF16"),
                                            ("amx_bf16", "does not run AMX-BF16 tiles")])
def test_bf16_kernel_setting_is_checked(value, fragment):
    k = available_paths()
    e = dict(os.environ, MOEUPCYCLE_BF16_KERNELS=value)
    p = subprocess.run([str(CLI), "topology", "--json"], capture_output=True, text=True, env=e)
    runs_here = {"avx512_bf16": "avx512_bf16" in k["cpu_features"], "amx_bf16": "amx_tiles_granted" in k["cpu_features"]}
    if runs_here.get(value):
        assert p.returncode == 0 and json.loads(p.stdout)["kernels"]["bf16_compute"] == value
    else:
        assert p.returncode != 0 and f"MOEUPCYCLE_BF16_KERNELS" in p.stderr and fragment in p.stderr


# --------------------------------------------------------------------------- the CLI


def test_bench_moe_compute_bf16():
    args = ["bench", "moe", "--tokens", 64, "--hidden", 64, "--ffn", 128, "--experts", 4, "--top-k", 2,
            "--iters", 2, "--stream-mib", 16, "--backward"]
    p = subprocess.run([str(CLI), *map(str, args + ["--compute", "bf16", "--json"])], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    j = json.loads(p.stdout)
    assert j["compute"] == "bf16" and j["dtype"] == "f32" and j["kernel_bf16"] in ("amx_bf16", "avx512_bf16", "fallback")
    assert j["forward_s"]["best"] > 0 and j["forward_backward_s"]["best"] > 0
    if j["peak_bf16_gflops"] is None:
        assert j["kernel_bf16"] == "fallback" and j["forward_bf16_peak_fraction"] is None
    else:
        assert j["peak_bf16_gflops"] > 0 and j["forward_bf16_peak_fraction"] > 0
        assert j["forward_backward_bf16_peak_fraction"] > 0
    text = subprocess.run([str(CLI), *map(str, args + ["--compute", "bf16"])], capture_output=True, text=True,
                          timeout=120)
    assert text.returncode == 0 and f"bf16 compute ({j['kernel_bf16']})" in text.stdout
    f32 = json.loads(subprocess.run([str(CLI), *map(str, args + ["--json"])], capture_output=True, text=True,
                                    check=True, timeout=120).stdout)
    assert f32["compute"] == "f32"
    bad = subprocess.run([str(CLI), *map(str, args + ["--compute", "f16"])], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "compute" in bad.stderr
    usage = subprocess.run([str(CLI), "bench", "moe", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--compute f32|bf16" in usage
