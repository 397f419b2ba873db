"""The high-level Python API over the C ABI."""
import numpy as np
import pytest

import moeupcycle as mu
from moeupcycle import _capi as C
from test_model import write_tiny


@pytest.fixture(scope="module")
def rt():
    with mu.Runtime(threads=2) as r:
        yield r


def test_version_and_errors(rt):
    assert mu.version() == "0.8.0"
    with pytest.raises(mu.MoeError) as e:
        mu.MoELayer(rt, hidden_size=0, moe_intermediate_size=8, num_experts=2, top_k=1)
    assert e.value.code == mu.C.MOE_ERR_INVALID_ARGUMENT and "hidden" in e.value.message
    with pytest.raises(mu.MoeError) as e:
        mu.inspect("/nonexistent/model")
    assert e.value.code == mu.C.MOE_ERR_NOT_FOUND


def test_enum_names_come_from_the_library(rt, tmp_path):
    assert mu.names("method") == ["copy", "drop", "noise", "granular", "partition"]
    assert mu.names("routing")[C.MOE_ROUTING_SIGMOID_TOPK_RENORM] == "sigmoid-topk-renorm"
    assert mu.names("nonfinite") == ["error", "skip"]
    with pytest.raises(ValueError):
        mu.names("colour")
    # Names are read by the library: case and '_' do not matter; an unknown one is the library's error.
    with mu.MoELayer(rt, 8, 8, 2, 1, routing="Sigmoid_TopK", storage="BF16", placement="none") as layer:
        c = layer.config()
        assert (c.routing, c.storage, c.placement) == (C.MOE_ROUTING_SIGMOID_TOPK, C.MOE_DTYPE_BF16,
                                                         C.MOE_PLACEMENT_NONE)
    with pytest.raises(mu.MoeError) as e:
        mu.upcycle(tmp_path / "in", tmp_path / "out", method="dropout")
    assert e.value.code == C.MOE_ERR_INVALID_ARGUMENT
    assert "dropout" in e.value.message and all(n in e.value.message for n in mu.names("method"))
    with pytest.raises(TypeError):
        mu.upcycle(tmp_path / "in", tmp_path / "out", router_aux_loss_coef=0.1)  # the 0.1 name
    with pytest.raises(TypeError):
        mu.MoELayer(rt, 8, 8, 2, 1, experts=2)


def test_layer_forward_backward_zero_copy_checks(rt):
    with mu.MoELayer(rt, hidden_size=16, moe_intermediate_size=32, num_experts=4, top_k=2,
                     shared_expert_intermediate_size=8, aux_loss_coef=0.5) as layer:
        c = layer.config()
        assert (c.hidden_size, c.moe_intermediate_size, c.num_experts, c.top_k) == (16, 32, 4, 2)
        assert c.shared_expert_intermediate_size == 8 and c.aux_loss_coef == 0.5
        layer.init_random(seed=1, std=0.1)
        assert layer.weight("gate").size == 4 * 32 * 16 and layer.weight("down", 3).size == 16 * 32
        assert layer.weight("shared_gate").size == layer.weight("shared-up").size == 8 * 16
        x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
        out = layer.forward(x, save=True)
        assert out.shape == (5, 16) and np.isfinite(out).all()
        dx = layer.backward(np.ones_like(out))
        assert dx.shape == x.shape and np.abs(layer.grad("gate")).sum() > 0
        s, counts = layer.stats()
        assert s.tokens == 5 and counts.sum() == 10 and s.aux_loss > 0
        routing = layer.routing()
        assert routing.shape == (5, 4) and ((routing > 0).sum(axis=1) == 2).all()
        np.testing.assert_allclose(routing.sum(axis=1), 1, rtol=1e-6)
        with pytest.raises(TypeError):
            layer.forward(x.astype(np.float64))
        with pytest.raises(TypeError):
            layer.forward(np.asfortranarray(np.ones((5, 16), np.float32)))
        with pytest.raises(ValueError):
            layer.forward(np.ones((5, 15), np.float32))
        w = layer.weight("router")
        layer.set_weight("router", np.zeros_like(w))
        assert not layer.weight("router").any()
    with pytest.raises(ValueError):
        layer.forward(x)   # closed


def test_layer_as_torch_function(rt):
    torch = pytest.importorskip("torch")
    with mu.MoELayer(rt, hidden_size=8, moe_intermediate_size=16, num_experts=2, top_k=1) as layer:
        layer.init_random(seed=2, std=0.2)
        x = torch.randn(3, 8, requires_grad=True)
        y = layer.torch_function().apply(x)
        y.sum().backward()
        assert x.grad.shape == (3, 8)


def test_upcycle_model_generate_eval_train(rt, tmp_path):
    src = tmp_path / "dense"
    write_tiny(src, seed=3)
    info = mu.inspect(src)
    assert info.architecture == b"llama"
    stages = []
    mu.upcycle(src, tmp_path / "moe", num_experts=4, top_k=2, method="drop", ratio=0.5, seed=1,
               progress=lambda done, total, stage: stages.append(stage) or True)
    assert stages
    with pytest.raises(mu.MoeError) as e:
        mu.upcycle(src, tmp_path / "moe", num_experts=4, top_k=2)
    assert e.value.code == mu.C.MOE_ERR_EXISTS
    with mu.Model(rt, tmp_path / "moe", weight_dtype="f32") as model:
        assert model.info.weight_dtype == C.MOE_DTYPE_F32
        ids = model.tokenize("Hello world")
        assert model.detokenize(ids) == "Hello world"
        assert model.logits(ids).shape == (len(ids), model.vocab_size)
        pieces = []
        text = model.generate("Hello", max_new_tokens=5, on_token=lambda t, s: pieces.append(s))
        assert "".join(pieces) == text
        r = model.eval_text("Hello world! " * 40, seq_len=16)
        assert r.perplexity > 1 and r.aux_loss > 0
        for layer in range(2):
            assert model.router_stats(layer).sum() == (r.tokens_scored + r.windows) * 2
        with mu.Trainer(model, "Hello world! " * 80, seq_len=12, batch=2, steps=3, train_only="moe",
                        schedule="constant", on_nonfinite="skip") as t:
            first = t.step()
            t.step()
            assert t.step().step == 3 and np.isfinite(first.loss) and first.aux_loss > 0 and first.skipped == 0
            assert t.eval() > 0
            # The trainer's held-out windows (at most eval_windows 8 of seq_len + 1 tokens) of its split.
            held = model.eval_text("Hello world! " * 80, seq_len=13, max_tokens=8 * 13, held_out=0.05)
            whole = model.eval_text("Hello world! " * 80, seq_len=13)
            assert held.mean_nll == t.eval() and 0 < held.tokens_scored < 0.06 * whole.tokens_scored
            t.save(tmp_path / "ckpt")
    with mu.Model(rt, tmp_path / "ckpt") as trained:
        assert trained.info.num_moe_layers == 2


def test_package_installs_with_pip(tmp_path):
    """`pip install bindings/python` gives an importable package that finds the library."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                        str(root / "bindings" / "python")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    env = dict(os.environ, PYTHONPATH=str(target))
    r = subprocess.run([sys.executable, "-c", "import moeupcycle; print(moeupcycle.version(), moeupcycle.__file__)"],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("0.8.0 ") and str(target) in r.stdout
