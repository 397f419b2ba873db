"""The upcycling study (moe_study_run, `moeupcycle study`, scripts/plot_study.py) end to end on a tiny
recipe: the report's structure, every run's held-out loss falling, the comparisons read from the
curves, resumption after a stop with the same results, finished runs not run again, and bad recipes."""
import ctypes
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import moeupcycle as m
from abi import expect, params
from models import CLI
from moeupcycle import _capi as C
from test_model import write_tiny

ROOT = Path(__file__).resolve().parents[2]
RECIPE = {
    "name": "tiny", "seed": 3, "tokenizer": "tok", "data": "texts", "eval_fraction": 0.1, "eval_windows": 4,
    "dense": {"hidden": 32, "layers": 2, "heads": 4, "kv_heads": 2, "ffn": 64},
    "moe": {"experts": 4, "top_k": 2},
    "train": {"batch": 4, "seq_len": 24, "lr": 3e-3, "warmup": 2},
    "dense_steps": [8, 16, 24], "upcycled_steps": [4, 8, 12], "eval_every": 4, "bootstrap": 8,
    "methods": [{"name": "copy", "method": "copy"}, {"name": "drop-0.5", "method": "drop", "ratio": 0.5}],
}


def text():
    words = ("the king and the queen walked to the castle where a bell rang and the people sang of the sea "
             "while a ship sailed far from the old town and the night came down on the hills").split()
    rng = np.random.default_rng(0)
    return " ".join(words[i] for i in rng.integers(0, len(words), 6000)) + "\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("study")
    write_tiny(base / "tok", seed=1)
    (base / "texts").mkdir()
    t = text()
    (base / "texts" / "a.txt").write_text(t[: len(t) // 2])
    (base / "texts" / "b.txt").write_text(t[len(t) // 2:])
    (base / "recipe.json").write_text(json.dumps(RECIPE))
    return base


@pytest.fixture(scope="module")
def report(setup):
    out = setup / "out"
    p = subprocess.run([str(CLI), "study", setup / "recipe.json", "--out", out, "--threads", "2"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "# Study tiny" in p.stdout and "## Claims" in p.stdout
    return out, json.loads((out / "report.json").read_text())


def test_report_structure_and_curves(setup, report):
    out, r = report
    names = {"dense", "scratch"} | {f"up-{mth}-d1-{d1}" for mth in ("copy", "drop-0.5") for d1 in (8, 16, 24)} \
        | {f"dense-d1-{d1}" for d1 in (8, 16, 24)}
    assert set(r["runs"]) == names
    assert r["tokens_per_step"] == 4 * 24 and r["methods"] == ["copy", "drop-0.5"]
    assert r["moe_flops_per_token"] > r["dense_flops_per_token"] > 0
    for name, curve in r["runs"].items():
        steps = [p["step"] for p in curve]
        assert steps == sorted(steps) and steps[0] == 0, name
        for p in curve:
            assert p["tokens"] == p["step"] * 96
        # Every run's held-out loss fell.
        assert curve[-1]["loss"] < curve[0]["loss"], (name, curve[0]["loss"], curve[-1]["loss"])
    assert [p["step"] for p in r["runs"]["dense"]] == [0, 4, 8, 12, 16, 20, 24]
    # The scratch run covers D1 + D2; the continued runs cover matched tokens and matched FLOPs.
    assert r["runs"]["scratch"][-1]["step"] == 24 + 12
    ratio = r["moe_flops_per_token"] / r["dense_flops_per_token"]
    cont = {p["step"] for p in r["runs"]["dense-d1-8"]}
    assert {4, 8, 12} <= cont and {round(d2 * ratio) for d2 in (4, 8, 12)} <= cont
    # The comparison table is read from the curves.
    rows = r["comparisons"]
    assert len(rows) == 3 * 4
    loss = lambda run, step: next(p["loss"] for p in r["runs"][run] if p["step"] == step)
    for row in rows:
        d1, d2 = int(row["d1_tokens"] / 96), int(row["d2_tokens"] / 96)
        assert row["dense_at_d1"] == loss("dense", d1)
        assert row["upcycled"]["copy"] == loss(f"up-copy-d1-{d1}", d2)
        assert row["dense_continued_tokens"] == loss(f"dense-d1-{d1}", d2)
        assert row["dense_continued_flops"] == loss(f"dense-d1-{d1}", round(d2 * ratio))
        if d2:
            assert row["scratch_d2"] == loss("scratch", d2) and row["scratch_d1_d2"] == loss("scratch", d1 + d2)
        else:
            # Copy-upcycling starts at the dense snapshot's loss; the continued run starts at the snapshot.
            assert row["upcycled"]["copy"] == pytest.approx(row["dense_at_d1"], abs=1e-4)
            assert row["dense_continued_tokens"] == row["dense_at_d1"]
    assert r["claims"]["copy_starts_at_the_dense_loss"]["verdict"] == "reproduced"
    assert set(r["claims"]) >= {"upcycled_copy_beats_dense_continued", "drop_catches_up_with_copy_as_d2_grows",
                                "interaction_term_positive_copy", "upcycled_drop-0.5_beats_scratch_at_equal_d2"}
    for c in r["claims"].values():
        assert c["verdict"] in ("reproduced", "not reproduced", "not measured") and c["detail"]
    # Fits: a law per run family, each with intervals, predicting its points.
    for key in ("dense", "scratch", "upcycled-copy", "upcycled-drop-0.5"):
        f = r["fits"][key]
        assert "law" in f and "low" in f and "high" in f, (key, f)
        assert f["rms_log_error"] < 0.05
    up = r["fits"]["upcycled-copy"]["law"]
    assert up["form"] == "upcycle"
    pts = [(d1 * 96, p["tokens"], p["loss"]) for d1 in (8, 16, 24) for p in r["runs"][f"up-copy-d1-{d1}"] if p["step"]]
    pred = m.predict_loss({"form": "upcycle", "e": up["E"], "a": up["A"], "alpha": up["alpha"],
                           "alpha2": up["alpha2"], "alpha3": up["alpha3"]},
                          [t for _, t, _ in pts], [d for d, _, _ in pts])
    assert np.sqrt(np.mean((np.log(pred) - np.log([l for _, _, l in pts])) ** 2)) == pytest.approx(
        r["fits"]["upcycled-copy"]["rms_log_error"], rel=1e-6)
    # The law files plan with the study's laws.
    assert r["law_files"] == ["laws-copy.json", "laws-drop-0.5.json"]
    plan = m.plan(dense_tokens=16 * 96, budget_tokens=8 * 96, dense_parameters=r["dense_parameters"],
                  law_file=str(out / "laws-copy.json"))
    row = next(x for x in rows if x["d1_tokens"] == 16 * 96 and x["d2_tokens"] == 8 * 96)
    assert plan.bootstrap == 8 and np.isfinite(plan.upcycled_loss)
    assert abs(plan.upcycled_loss - row["upcycled"]["copy"]) < 0.1
    md = (out / "report.md").read_text()
    assert "| D1 tokens |" in md and "upcycled copy" in md and "## Fits" in md


def test_plots(report):
    out, _ = report
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "matplotlib"],
                   check=False, capture_output=True)
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_study.py"), str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    for name in ("loss_vs_tokens.png", "loss_vs_flops.png", "fits.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name


def test_stopped_study_resumes_to_the_same_report(setup, report, tmp_path):
    _, full = report
    out = tmp_path / "out"
    calls = []

    def stop_after_a_while(done, total, stage):
        calls.append(stage)
        return len(calls) < 70  # stops inside an upcycled run

    with pytest.raises(m.MoeError) as e:
        m.run_study(setup / "recipe.json", out, progress=stop_after_a_while, threads=2)
    assert e.value.code == C.MOE_ERR_CANCELLED and not (out / "report.json").exists()
    done_before = {p.name for p in (out / "runs").iterdir() if (p / "result.json").exists()}
    assert "dense" in done_before
    seen = []
    path = m.run_study(setup / "recipe.json", out, progress=lambda d, t, s: seen.append(s) or True, threads=2)
    resumed = json.loads(Path(path).read_text())
    # Finished runs were not run again; the results are the same bits.
    assert not done_before & set(seen)
    assert resumed["runs"] == full["runs"] and resumed["comparisons"] == full["comparisons"]
    assert resumed["fits"] == full["fits"]
    # A third run does nothing but write the report again.
    seen.clear()
    m.run_study(setup / "recipe.json", out, progress=lambda d, t, s: seen.append(s) or True, threads=2)
    assert seen == []


@pytest.mark.parametrize("change, fragment", [
    (dict(dense_steps=[]), "dense_steps"),
    (dict(upcycled_steps=[8, 4]), "increasing"),
    (dict(dense_steps=[0, 4]), "positive integers"),
    (dict(methods=[]), "methods"),
    (dict(methods=[{"name": "x", "method": "bogus"}]), "method"),
    (dict(methods=[{"name": "a b", "method": "copy"}]), "method name"),
    (dict(methods=[{"name": "a", "method": "copy"}, {"name": "a", "method": "drop"}]), "differ"),
    (dict(train={"warmup": 50}), "warmup"),
    (dict(eval_every=0), "eval_every"),
    (dict(seed=-1), "seed"),
    (dict(bootstrap=-2), "bootstrap"),
    (dict(dense_steps=[1e20]), "positive integers"),
])
def test_bad_recipes_are_refused(setup, tmp_path, change, fragment):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({**RECIPE, "tokenizer": str(setup / "tok"), "data": str(setup / "texts"), **change}))
    st = C.lib.moe_study_run(str(recipe).encode(), str(tmp_path / "out").encode(), None)
    expect(st, C.MOE_ERR_FORMAT, fragment)
    assert not (tmp_path / "out").exists()


def test_study_errors(setup, tmp_path):
    expect(C.lib.moe_study_run(None, b"x", None), C.MOE_ERR_NULL_POINTER, "recipe_path")
    expect(C.lib.moe_study_run(str(tmp_path / "none.json").encode(), b"x", None), C.MOE_ERR_NOT_FOUND, "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    expect(C.lib.moe_study_run(str(bad).encode(), str(tmp_path / "o").encode(), None), C.MOE_ERR_FORMAT, "bad.json")
    st = C.lib.moe_study_run(str(setup / "recipe.json").encode(), str(tmp_path / "o2").encode(),
                             params(C.moe_study_params, data=str(tmp_path / "missing")))
    expect(st, C.MOE_ERR_NOT_FOUND, "missing")


def test_a_directory_holds_one_recipes_runs(setup, report, tmp_path):
    out, _ = report
    changed = tmp_path / "recipe.json"
    changed.write_text(json.dumps({**RECIPE, "tokenizer": str(setup / "tok"), "data": str(setup / "texts"),
                                   "train": {**RECIPE["train"], "lr": 1e-3}}))
    before = sorted(p.name for p in (out / "runs").iterdir())
    st = C.lib.moe_study_run(str(changed).encode(), str(out).encode(), None)
    expect(st, C.MOE_ERR_EXISTS, "another recipe")
    assert sorted(p.name for p in (out / "runs").iterdir()) == before
    # Other data, same recipe: refused too.
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text(text()[:9000])
    st = C.lib.moe_study_run(str(setup / "recipe.json").encode(), str(out).encode(),
                             params(C.moe_study_params, data=str(tmp_path / "texts")))
    expect(st, C.MOE_ERR_EXISTS, "other data")
