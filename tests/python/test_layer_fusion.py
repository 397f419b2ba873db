"""The MoE layer's fused phases: an inference forward (routing weights applied as
the down projection writes its rows, the combine only adding) gives the same bits
as a saving forward (weights applied in the combine), on one node and with experts
split over two nodes, f32 and bf16 storage, with and without a shared expert, and
for token counts on both the streaming (few rows per expert) and packed paths."""
from __future__ import annotations

import numpy as np
import pytest

import layer_reference as ref
from abi import Layer, Runtime
from moeupcycle import _capi as C
from models import bf16_round
from test_layer import close, dims

SYNTHETIC = "pack:2 [numa] core:2 pu:1"


@pytest.fixture(scope="module", params=["machine", "synthetic"])
def runtime(request):
    r = Runtime(threads=2) if request.param == "machine" else Runtime(threads=4, synthetic=SYNTHETIC)
    yield r
    r.close()


@pytest.mark.parametrize("T", [5, 40, 300])
@pytest.mark.parametrize("storage", [C.MOE_DTYPE_F32, C.MOE_DTYPE_BF16])
@pytest.mark.parametrize("shared", [0, 24])
def test_inference_forward_equals_saving_forward(runtime, T, storage, shared):
    H, F, E = 40, 72, 6
    rng = np.random.default_rng(T + shared)
    W = ref.random_weights(rng, hidden=H, ffn=F, experts=E, shared_ffn=shared, router_scale=2.0)
    x = rng.standard_normal((T, H)).astype(np.float32)
    with Layer(runtime, **dims(H, F, E, shared), top_k=2, storage=storage) as layer:
        layer.set_all(W)
        plain = layer.forward(x)
        saving = layer.forward(x, C.MOE_FORWARD_SAVE)
        again = layer.forward(x)
        assert np.array_equal(plain.view(np.uint32), saving.view(np.uint32))
        assert np.array_equal(plain.view(np.uint32), again.view(np.uint32))
        # And the answer itself, against the float64 reference (bf16 storage: its rounded weights).
        Wr = dict(W)
        if storage == C.MOE_DTYPE_BF16:
            for k in ("gate", "up", "down", "shared_gate", "shared_up", "shared_down"):
                if k in W:
                    Wr[k] = bf16_round(W[k])
        close(plain, ref.forward(x, Wr, ref.Config(top_k=2)).out, what=f"T={T}")
