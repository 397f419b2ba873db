"""Scaling laws through the C ABI, the Python binding and `moeupcycle plan`: prediction, the published
presets, fits that recover known coefficients (with bootstrap intervals), bad input, and the planner."""
import ctypes
import json
import math
import subprocess

import numpy as np
import pytest

import moeupcycle as m
from abi import expect, params, result
from models import CLI
from moeupcycle import _capi as C
from test_model import write_tiny

COEFFS = ["e", "a", "alpha", "alpha2", "alpha3", "b", "beta"]


def law_dict(law):
    return {k: getattr(law, k) for k in COEFFS}


def formula(law, D, D1=None, N=None):
    """The forms of docs/scaling.md, written out in numpy."""
    D = np.asarray(D, dtype=np.float64)
    if law["form"] in ("upcycle", "upcycle-params"):
        D1 = np.asarray(D1, dtype=np.float64)
        data = law["a"] * D1 ** -law["alpha"] * D ** (-law["alpha2"] + law["alpha3"] * np.log(D1))
    else:
        data = law["a"] * D ** -law["alpha"]
    if law["form"].endswith("params"):
        data = data + law["b"] * np.asarray(N, dtype=np.float64) ** -law["beta"]
    return law["e"] + data


# Truths and designs per form: (law, D, D1, N)
def _design(form):
    if form == "data":
        return dict(form=form, e=1.8, a=400.0, alpha=0.35), np.geomspace(1e5, 1e9, 12), None, None
    if form == "data-params":
        D, N = np.meshgrid(np.geomspace(1e6, 1e10, 6), np.geomspace(1e6, 1e9, 5), indexing="ij")
        return dict(form=form, e=1.7, a=410.0, alpha=0.28, b=406.0, beta=0.34), D.ravel(), None, N.ravel()
    D1, D2 = np.meshgrid(np.geomspace(1e6, 1e10, 5), np.geomspace(1e6, 1e10, 6), indexing="ij")
    if form == "upcycle":
        return dict(form=form, e=2.0, a=60.0, alpha=0.08, alpha2=0.2, alpha3=0.004), D2.ravel(), D1.ravel(), None
    D1, D2, N = np.meshgrid([1e8, 1e9, 1e10, 1e11], [1e8, 3e8, 1e9, 3e9, 1e10], [1e7, 1e8, 1e9], indexing="ij")
    truth = dict(form=form, e=0.165, a=16.3, alpha=0.043, alpha2=0.085, alpha3=7.98e-4, b=8.53, beta=0.112)
    return truth, D2.ravel(), D1.ravel(), N.ravel()


FORMS = ["data", "data-params", "upcycle", "upcycle-params"]


def test_presets_are_table_2_of_the_paper():
    dense, moe, up = (m.scaling_law(f"liew2025-{n}") for n in ("dense", "moe", "upcycled"))
    assert (dense.form, moe.form, up.form) == (C.MOE_LAW_DATA_PARAMS, C.MOE_LAW_DATA_PARAMS, C.MOE_LAW_UPCYCLE_PARAMS)
    assert law_dict(dense) == dict(e=0.165, a=8.83, alpha=0.088, alpha2=0, alpha3=0, b=12.3, beta=0.116)
    assert law_dict(moe) == dict(e=0.165, a=32.0, alpha=0.161, alpha2=0, alpha3=0, b=7.05, beta=0.080)
    assert law_dict(up) == dict(e=0.165, a=16.3, alpha=0.043, alpha2=0.085, alpha3=7.98e-4, b=8.53, beta=0.112)
    out = result(C.moe_scaling_law)
    expect(C.lib.moe_scaling_law_preset(out, b"chinchilla"), C.MOE_ERR_INVALID_ARGUMENT, "liew2025-dense")
    expect(C.lib.moe_scaling_law_preset(None, b"liew2025-moe"), C.MOE_ERR_NULL_POINTER, "out")


@pytest.mark.parametrize("form", FORMS)
def test_prediction_is_the_formula(form):
    truth, D, D1, N = _design(form)
    got = m.predict_loss(truth, D, D1, N)
    np.testing.assert_allclose(got, formula(truth, D, D1, N), rtol=1e-12)


@pytest.mark.parametrize("form", FORMS)
def test_fit_recovers_the_coefficients(form):
    truth, D, D1, N = _design(form)
    y = formula(truth, D, D1, N)
    fit = m.fit_scaling_law(D, y, D1, N, form=form)
    assert fit.form == FORMS.index(form)
    for k, v in truth.items():
        if k != "form":
            assert getattr(fit, k) == pytest.approx(v, rel=1e-4), (k, getattr(fit, k), v)
    # The same fit is the same bits.
    again = m.fit_scaling_law(D, y, D1, N, form=form)
    assert law_dict(again) == law_dict(fit)


@pytest.mark.parametrize("form", ["data", "data-params", "upcycle"])
def test_noisy_fit_and_bootstrap_intervals(form):
    truth, D, D1, N = _design(form)
    rng = np.random.default_rng(11)
    y = formula(truth, D, D1, N) * np.exp(rng.normal(0, 0.002, len(D)))
    fit, low, high = m.fit_scaling_law(D, y, D1, N, form=form, bootstrap=40, seed=3, intervals=True)
    # Exponents within a few percent; the truth inside (or at the edge of) each 95% interval.
    assert fit.alpha == pytest.approx(truth["alpha"], rel=0.1)
    for k, v in truth.items():
        if k == "form":
            continue
        lo, hi = getattr(low, k), getattr(high, k)
        assert lo <= hi, k
        width = hi - lo
        assert lo - 0.5 * width <= v <= hi + 0.5 * width, (k, v, lo, hi)
    # Seeded: the same intervals again; another seed, others.
    _, low2, _ = m.fit_scaling_law(D, y, D1, N, form=form, bootstrap=40, seed=3, intervals=True)
    assert law_dict(low2) == law_dict(low)
    _, low3, _ = m.fit_scaling_law(D, y, D1, N, form=form, bootstrap=40, seed=4, intervals=True)
    assert law_dict(low3) != law_dict(low)


def _fit_status(tokens, losses, dense=None, n=None, count=None, low=None, **fields):
    arr = lambda v: None if v is None else (ctypes.c_double * max(len(v), 1))(*v)
    count = len(tokens) if count is None else count
    return C.lib.moe_scaling_fit(result(C.moe_scaling_law), low, None, arr(tokens), arr(dense), arr(n), arr(losses),
                                 count, params(C.moe_fit_params, **fields))


def test_fit_refuses_bad_points_with_a_reason():
    D = [1e6, 1e7, 1e8, 1e9, 1e10]
    y = [5.0, 4.0, 3.5, 3.2, 3.0]
    expect(_fit_status(D[:3], y[:3]), C.MOE_ERR_INVALID_ARGUMENT, "more than 3 points")
    expect(_fit_status(D, y, form="upcycle-params"), C.MOE_ERR_NULL_POINTER, "dense_tokens")
    expect(_fit_status(D, y, dense=D, form="upcycle"), C.MOE_ERR_INVALID_ARGUMENT, "more than 5 points")
    expect(_fit_status([1e6, 0.0, 1e8, 1e9, 1e10], y), C.MOE_ERR_INVALID_ARGUMENT, "point 1", "tokens")
    expect(_fit_status([1e6, -5, 1e8, 1e9, 1e10], y), C.MOE_ERR_INVALID_ARGUMENT, "positive")
    expect(_fit_status(D, [5.0, float("nan"), 3.5, 3.2, 3.0]), C.MOE_ERR_INVALID_ARGUMENT, "point 1", "loss")
    expect(_fit_status(D, [5.0, 4.0, 3.5, 3.2, -1.0]), C.MOE_ERR_INVALID_ARGUMENT, "loss")
    expect(_fit_status(D, y, low=result(C.moe_scaling_law)), C.MOE_ERR_INVALID_ARGUMENT, "bootstrap")
    expect(_fit_status(D, y, huber_delta=0.0), C.MOE_ERR_INVALID_ARGUMENT, "Huber")
    expect(_fit_status(D, y, form=9), C.MOE_ERR_INVALID_ARGUMENT, "form")
    expect(C.lib.moe_scaling_fit(None, None, None, None, None, None, None, 0, None), C.MOE_ERR_NULL_POINTER, "law")
    expect(_fit_status(D, None), C.MOE_ERR_NULL_POINTER, "losses")
    expect(_fit_status(D, y, count=1 << 40), C.MOE_ERR_INVALID_ARGUMENT, "too large")
    bad = dict(form="data", e=float("inf"), a=1.0, alpha=0.1)
    with pytest.raises(m.MoeError, match="not finite"):
        m.predict_loss(bad, [1e6])
    with pytest.raises(m.MoeError, match="positive"):
        m.predict_loss(dict(form="data", e=1.0, a=1.0, alpha=0.1), [0.0])


# --------------------------------------------------------------------------- the planner


def test_planner_agrees_with_the_paper_qualitatively():
    """With the published laws: upcycling beats the MoE from scratch when the budget is small relative to
    D1, and (counting the dense model's pretraining) its edge shrinks as D1 grows; the D2 exponent falls
    as D1 grows (the interaction term)."""
    small = m.plan(dense_tokens=1e11, budget_tokens=1e9, dense_parameters=1e9)
    assert small.upcycled_loss < small.scratch_loss
    assert small.break_even_tokens > 1e9 and math.isfinite(small.break_even_tokens)
    large = m.plan(dense_tokens=1e11, budget_tokens=1e12, dense_parameters=1e9)
    assert large.scratch_loss < large.upcycled_loss  # beyond the break-even
    edges, exponents = [], []
    for d1 in (1e9, 1e10, 1e11, 1e12, 1e13):
        r = m.plan(dense_tokens=d1, budget_tokens=1e10, dense_parameters=1e9)
        edges.append(r.scratch_all_loss - r.upcycled_loss)
        exponents.append(r.d2_exponent)
        up = m.scaling_law("liew2025-upcycled")
        assert r.upcycled_loss == pytest.approx(formula(dict(form="upcycle-params", **law_dict(up)), 1e10, d1, 1e9))
        assert r.scratch_all_tokens == d1 + 1e10 and r.dense_tokens == 1e10
        assert r.best in (C.MOE_PLAN_UPCYCLE, C.MOE_PLAN_SCRATCH, C.MOE_PLAN_DENSE)
        losses = [r.upcycled_loss, r.scratch_loss, r.dense_loss]
        assert r.best == int(np.argmin(losses))
        assert math.isnan(r.upcycled_loss_low) and r.bootstrap == 0
    # From D1 = 1e10 on the edge shrinks at every step (between 1e9 and 1e10 it is flat: -0.103, -0.097).
    assert edges[1:] == sorted(edges[1:], reverse=True) and edges[-1] < edges[0] - 0.2, edges
    assert exponents == sorted(exponents, reverse=True) and exponents[0] == pytest.approx(0.085 - 7.98e-4 * math.log(1e9))


def test_planner_flops_budget_and_law_file(tmp_path):
    r = m.plan(dense_tokens=1e11, budget_flops=6e19, dense_parameters=1e9, active_parameters=2e9)
    assert r.upcycled_tokens == pytest.approx(5e9) and r.dense_tokens == pytest.approx(1e10)
    assert r.scratch_all_tokens == pytest.approx((6e9 * 1e11 + 6e19) / 1.2e10)
    # A law file with bootstrap sets: intervals around the estimates.
    def law_json(law, form):
        d = {"form": form, "E": law.e, "A": law.a, "alpha": law.alpha}
        if form.startswith("upcycle"):
            d.update(alpha2=law.alpha2, alpha3=law.alpha3)
        if form.endswith("params"):
            d.update(B=law.b, beta=law.beta)
        return d
    sets = {"dense": law_json(m.scaling_law("liew2025-dense"), "data-params"),
            "moe": law_json(m.scaling_law("liew2025-moe"), "data-params"),
            "upcycled": law_json(m.scaling_law("liew2025-upcycled"), "upcycle-params")}
    boots = []
    for scale in (0.98, 0.99, 1.01, 1.02):
        s = json.loads(json.dumps(sets))
        for v in s.values():
            v["A"] *= scale
        boots.append(s)
    path = tmp_path / "laws.json"
    path.write_text(json.dumps({**sets, "bootstrap": boots}))
    base = m.plan(dense_tokens=1e11, budget_tokens=1e10, dense_parameters=1e9)
    r = m.plan(dense_tokens=1e11, budget_tokens=1e10, dense_parameters=1e9, law_file=str(path))
    assert r.bootstrap == 4 and r.upcycled_loss == pytest.approx(base.upcycled_loss)
    assert r.upcycled_loss_low < r.upcycled_loss < r.upcycled_loss_high
    assert r.scratch_loss_low < r.scratch_loss < r.scratch_loss_high and r.break_even_low <= r.break_even_high
    # A law given directly replaces the file's and drops its bootstrap sets.
    flat = dict(form="data-params", e=0.165, a=32.0, alpha=0.161, b=7.05, beta=0.080)
    r2 = m.plan(moe_law=dict(flat, a=10.0), dense_tokens=1e11, budget_tokens=1e10, dense_parameters=1e9,
                law_file=str(path))
    assert r2.bootstrap == 0 and r2.scratch_loss < r.scratch_loss
    # Bad questions and files.
    def status(**fields):
        return C.lib.moe_scaling_plan(result(C.moe_plan_result), params(C.moe_plan_params, **fields))
    expect(status(budget_tokens=1e10, dense_parameters=1e9), C.MOE_ERR_INVALID_ARGUMENT, "D1")
    expect(status(dense_tokens=1e11, budget_tokens=1e10), C.MOE_ERR_INVALID_ARGUMENT, "N1")
    expect(status(dense_tokens=1e11, dense_parameters=1e9), C.MOE_ERR_INVALID_ARGUMENT, "budget")
    expect(status(dense_tokens=1e11, budget_tokens=1e10, budget_flops=1e20, dense_parameters=1e9),
           C.MOE_ERR_INVALID_ARGUMENT, "not both")
    expect(status(dense_tokens=1e11, budget_flops=1e20, dense_parameters=1e9), C.MOE_ERR_INVALID_ARGUMENT, "active")
    expect(status(dense_tokens=1e11, budget_tokens=1e10, dense_parameters=1e9, law_file=str(tmp_path / "none.json")),
           C.MOE_ERR_NOT_FOUND, "none.json")
    (tmp_path / "bad.json").write_text(json.dumps({"dense": sets["dense"], "moe": sets["moe"]}))
    expect(status(dense_tokens=1e11, budget_tokens=1e10, dense_parameters=1e9, law_file=str(tmp_path / "bad.json")),
           C.MOE_ERR_FORMAT, "upcycled")
    swapped = {**sets, "upcycled": sets["dense"]}
    (tmp_path / "swapped.json").write_text(json.dumps(swapped))
    expect(status(dense_tokens=1e11, budget_tokens=1e10, dense_parameters=1e9,
                  law_file=str(tmp_path / "swapped.json")), C.MOE_ERR_INVALID_ARGUMENT, "upcycle")
    expect(C.lib.moe_scaling_plan(result(C.moe_plan_result), None), C.MOE_ERR_NULL_POINTER, "params")


def run(*args):
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True)


def test_cli_plan(tmp_path):
    p = run("plan", "--dense-tokens", "1e11", "--budget-tokens", "1e9", "--params", "1e9")
    assert p.returncode == 0, p.stderr
    assert "best:" in p.stdout and "stops beating the MoE from scratch beyond D2" in p.stdout
    j = run("plan", "--dense-tokens", "1e11", "--budget-tokens", "1e9", "--params", "1e9", "--json")
    out = json.loads(j.stdout)
    r = m.plan(dense_tokens=1e11, budget_tokens=1e9, dense_parameters=1e9)
    assert out["upcycled"]["loss"] == r.upcycled_loss and out["break_even_tokens"] == r.break_even_tokens
    assert out["best"] == ["upcycle", "scratch", "dense"][r.best] and out["upcycled"]["loss_low"] is None
    # N1 and the MoE's active parameters from a checkpoint.
    tiny = tmp_path / "tiny"
    write_tiny(tiny)
    info = m.inspect(tiny)
    j = run("plan", "--dense-tokens", "1e9", "--budget-flops", "1e15", "--model", tiny, "--experts", "4",
            "--top-k", "2", "--json")
    out = json.loads(j.stdout)
    ffn = 3 * info.hidden_size * info.intermediate_size * info.num_layers
    assert out["dense_parameters"] == info.param_count
    assert out["active_parameters"] == info.param_count + ffn + 4 * info.hidden_size * info.num_layers
    assert out["upcycled"]["tokens"] == pytest.approx(1e15 / (6 * out["active_parameters"]))
    assert run("plan", "--budget-tokens", "1e9", "--params", "1e9").returncode == 2
    assert run("plan", "--dense-tokens", "1e11", "--params", "1e9").returncode == 2
    bad = run("plan", "--dense-tokens", "1e11", "--budget-tokens", "1e9", "--params", "1e9", "--law", tmp_path / "x.json")
    assert bad.returncode == 1 and "x.json" in bad.stderr
