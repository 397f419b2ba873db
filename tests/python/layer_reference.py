"""An independent float64 numpy reference of one MoE SwiGLU layer (include/moeupcycle.h,
"MoE layer: forward and backward"): routing, capacity, expert choice, shared expert,
balance and z losses, and the analytic backward.

Discrete choices (top-k sets, capacity drops, expert-choice picks) are made once by
`plan()` and are constants for the derivatives; pass the same plan to `forward` to
evaluate the function at perturbed inputs with the same decisions (finite differences).

`forward(..., bf16_compute=True)` (and the `backward` of its result) rounds both operands of
every expert product to bf16 first, as moe_layer_config.compute = MOE_DTYPE_BF16 does; the
router and everything element-wise stay float64.

Weights are a dict with keys
  router [E,H], gate [E,F,H], up [E,F,H], down [E,H,F],
  and optionally shared_gate [Fs,H], shared_up [Fs,H], shared_down [H,Fs], shared_expert_gate [H].
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

SOFTMAX_TOPK_RENORM, SOFTMAX_TOPK, TOPK_SOFTMAX, SIGMOID_TOPK, SIGMOID_TOPK_RENORM = range(5)
SIGMOID_MODES = (SIGMOID_TOPK, SIGMOID_TOPK_RENORM)
WEIGHT_NAMES = ("router", "gate", "up", "down", "shared_gate", "shared_up", "shared_down",
                "shared_expert_gate")


@dataclass
class Config:
    top_k: int
    routing: int = SOFTMAX_TOPK_RENORM
    capacity_factor: float = 0.0
    expert_choice: bool = False
    balance_coef: float = 0.01
    z_coef: float = 0.001


@dataclass
class Plan:
    """The discrete routing decisions of one forward."""
    selected: np.ndarray  # [T,E] bool: token-choice top-k set (before drops); expert choice: kept
    kept: np.ndarray  # [T,E] bool: assignments computed
    dropped: int
    capacity: int  # 0 = dropless
    margin: float  # smallest gap of log-scores at a decision boundary (near 0 = ambiguous in f32)


@dataclass
class Result:
    out: np.ndarray
    combine: np.ndarray  # [T,E]
    plan: Plan
    tokens_per_expert: np.ndarray
    assignments: int
    balance_loss: float
    z_loss: float
    cache: dict = field(default_factory=dict)


def sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def logsumexp(z, axis=-1):
    m = z.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=axis, keepdims=True)))[..., 0]


def silu(z):
    return z * sigmoid(z)


def _scores(logits, routing):
    """Per-expert score used for selection and expert-choice weights."""
    if routing in SIGMOID_MODES:
        return sigmoid(logits)
    if routing == TOPK_SOFTMAX:
        return logits  # top-k of the logits (same order as softmax probabilities)
    return softmax(logits)


def _log_scores(logits, routing):
    """A monotone transform of the selection score, in units where float32 rounding is ~1e-6."""
    if routing in SIGMOID_MODES:
        return np.log(sigmoid(logits))
    return logits - logsumexp(logits)[:, None]


def plan(logits: np.ndarray, cfg: Config) -> Plan:
    T, E = logits.shape
    K = cfg.top_k
    selected = np.zeros((T, E), bool)
    kept = np.zeros((T, E), bool)
    margin = math.inf
    if T == 0:
        return Plan(selected, kept, 0, 0, margin)
    if cfg.expert_choice:
        cf = cfg.capacity_factor if cfg.capacity_factor > 0 else 1.0
        cap = min(T, math.ceil(cf * T * K / E))
        score = softmax(logits) if cfg.routing not in SIGMOID_MODES else sigmoid(logits)
        ls = _log_scores(logits, cfg.routing)
        for e in range(E):
            order = np.lexsort((np.arange(T), -score[:, e]))  # score desc, then token index asc
            kept[order[:cap], e] = True
            if cap < T:
                margin = min(margin, ls[order[cap - 1], e] - ls[order[cap], e])
        return Plan(kept.copy(), kept, 0, cap, margin)
    s = _scores(logits, cfg.routing)
    ls = _log_scores(logits, cfg.routing)
    order = np.zeros((T, K), int)
    for t in range(T):
        o = np.lexsort((np.arange(E), -s[t]))  # score desc, then expert index asc
        order[t] = o[:K]
        selected[t, o[:K]] = True
        if K < E:
            margin = min(margin, ls[t, o[K - 1]] - ls[t, o[K]])
    cap = 0
    dropped = 0
    if cfg.capacity_factor > 0:
        cap = math.ceil(cfg.capacity_factor * T * K / E)
        fill = np.zeros(E, int)
        for slot in range(K):
            for t in range(T):
                e = order[t, slot]
                if fill[e] < cap:
                    fill[e] += 1
                    kept[t, e] = True
                else:
                    dropped += 1
    else:
        kept = selected.copy()
    return Plan(selected, kept, dropped, cap, margin)


def _combine(logits, cfg: Config, p: Plan):
    """Dense [T,E] combine weights (zero where not kept) and what backward needs."""
    T, E = logits.shape
    sel = p.selected
    if cfg.expert_choice:
        score = softmax(logits) if cfg.routing not in SIGMOID_MODES else sigmoid(logits)
        return np.where(p.kept, score, 0.0)
    r = cfg.routing
    if r == SOFTMAX_TOPK:
        w = softmax(logits)
    elif r in (SOFTMAX_TOPK_RENORM, TOPK_SOFTMAX):
        # p_sel / sum(p_sel) == softmax over the chosen logits
        masked = np.where(sel, logits, -np.inf)
        w = softmax(masked) if T else np.zeros((0, E))
    elif r == SIGMOID_TOPK:
        w = sigmoid(logits)
    elif r == SIGMOID_TOPK_RENORM:
        s = np.where(sel, sigmoid(logits), 0.0)
        w = s / s.sum(axis=1, keepdims=True) if T else s
    else:
        raise ValueError(r)
    return np.where(p.kept, w, 0.0)


def _combine_backward(logits, cfg: Config, p: Plan, gw):
    """d(combine)/d(logits)^T applied to gw [T,E] (gw is zero where not kept)."""
    gw = np.where(p.kept, gw, 0.0)
    sel = p.selected
    if cfg.expert_choice:
        if cfg.routing in SIGMOID_MODES:
            s = sigmoid(logits)
            return gw * s * (1 - s)
        q = softmax(logits)
        return q * (gw - (gw * q).sum(1, keepdims=True))
    r = cfg.routing
    if r == SOFTMAX_TOPK:
        q = softmax(logits)
        return q * (gw - (gw * q).sum(1, keepdims=True))
    if r in (SOFTMAX_TOPK_RENORM, TOPK_SOFTMAX):
        w = softmax(np.where(sel, logits, -np.inf))
        return w * (gw - (gw * w).sum(1, keepdims=True))
    if r == SIGMOID_TOPK:
        s = sigmoid(logits)
        return gw * s * (1 - s)
    if r == SIGMOID_TOPK_RENORM:
        s = sigmoid(logits)
        ss = np.where(sel, s, 0.0)
        S = ss.sum(1, keepdims=True)
        w = ss / S
        ds = np.where(sel, (gw - (gw * w).sum(1, keepdims=True)) / S, 0.0)
        return ds * s * (1 - s)
    raise ValueError(r)


def _router_probs(logits, cfg):
    if cfg.routing in SIGMOID_MODES:
        s = sigmoid(logits)
        return s / s.sum(1, keepdims=True)
    return softmax(logits)


def _losses(logits, cfg: Config, p: Plan):
    T, E = logits.shape
    if T == 0:
        return 0.0, 0.0, np.zeros(E)
    K = cfg.top_k
    counts = p.kept.sum(0) if cfg.expert_choice else p.selected.sum(0)
    f = counts / (T * K)
    P = _router_probs(logits, cfg).mean(0)
    balance = E * float((f * P).sum())
    z = float((logsumexp(logits) ** 2).mean())
    return balance, z, f


def _losses_backward(logits, cfg: Config, f, cb, cz):
    """cb * d(balance)/d(logits) + cz * d(z)/d(logits); f constant."""
    T, E = logits.shape
    if T == 0:
        return np.zeros((0, E))
    G = np.broadcast_to(cb * E * f / T, (T, E))
    if cfg.routing in SIGMOID_MODES:
        s = sigmoid(logits)
        S = s.sum(1, keepdims=True)
        q = s / S
        ds = (G - (G * q).sum(1, keepdims=True)) / S
        d = ds * s * (1 - s)
    else:
        q = softmax(logits)
        d = q * (G - (G * q).sum(1, keepdims=True))
    lse = logsumexp(logits)
    d = d + cz * 2.0 * lse[:, None] * softmax(logits) / T
    return d


def bf16(a):
    """a (held as f32, as the library holds it) rounded to bf16 (nearest even; NaN stays NaN;
    subnormals to zero), as float64."""
    bits = np.asarray(a, np.float64).astype(np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    rounded = np.where((bits & 0x7F800000) == 0, bits & 0x80000000, rounded)
    rounded = np.where((bits & 0x7FFFFFFF) > 0x7F800000, (bits | 0x00400000) & 0xFFFF0000, rounded)
    return rounded.astype(np.uint32).view(np.float32).astype(np.float64)


def matmul(a, b, bf16_compute=False):
    """a @ b; with bf16_compute, of the operands rounded to bf16."""
    return bf16(a) @ bf16(b) if bf16_compute else a @ b


def int8_activations(x):
    """x [T, K] as integer dot products see it: per block of 32 along K, q = round(x * 127 / max|x|) (ties
    to even, clamped to +-127), times max|x| / 127, all in f32."""
    x = np.asarray(x, np.float32)
    blocks = x.reshape(x.shape[0], -1, 32)
    amax = np.abs(blocks).max(-1, keepdims=True)
    inverse = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    q = np.clip(np.rint(blocks * inverse), -127, 127)
    return (q * (amax / np.float32(127))).reshape(x.shape).astype(np.float32)


def _ffn(x, g, u, d, bf16_compute=False, expert_input=None):
    """`expert_input(a)`: how the left operand of each product enters it (default: as it is)."""
    enter = expert_input or (lambda a: a)
    mm = lambda a, b: matmul(enter(a), b, bf16_compute)  # noqa: E731
    hg = mm(x, g.T)
    hu = mm(x, u.T)
    a = silu(hg) * hu
    return mm(a, d.T), (hg, hu, a)


def _ffn_backward(x, g, u, d, cache, dy, bf16_compute=False):
    mm = lambda a, b: matmul(a, b, bf16_compute)  # noqa: E731
    hg, hu, a = cache
    dd = mm(dy.T, a)
    da = mm(dy, d)
    sg = sigmoid(hg)
    dhu = da * hg * sg
    dhg = da * hu * sg * (1 + hg * (1 - sg))
    dg = mm(dhg.T, x)
    du = mm(dhu.T, x)
    dx = mm(dhg, g) + mm(dhu, u)
    return dx, dg, du, dd


def forward(x, W: dict, cfg: Config, fixed_plan: Plan | None = None, bf16_compute: bool = False,
            expert_input=None) -> Result:
    """`expert_input(a)` models how activations enter the expert products (e.g. int8_activations); the
    result of such a forward has no backward."""
    x = np.asarray(x, np.float64)
    W = {k: np.asarray(v, np.float64) for k, v in W.items()}
    T, H = x.shape
    E = W["router"].shape[0]
    logits = x @ W["router"].T
    p = fixed_plan if fixed_plan is not None else plan(logits, cfg)
    comb = _combine(logits, cfg, p)
    out = np.zeros((T, H))
    ys = {}
    for e in range(E):
        idx = np.nonzero(p.kept[:, e])[0]
        if len(idx) == 0:
            continue
        y, c = _ffn(x[idx], W["gate"][e], W["up"][e], W["down"][e], bf16_compute, expert_input)
        ys[e] = (idx, y, c)
        out[idx] += comb[idx, e:e + 1] * y
    shared = None
    if "shared_gate" in W:
        ysh, csh = _ffn(x, W["shared_gate"], W["shared_up"], W["shared_down"], bf16_compute, expert_input)
        gam = sigmoid(x @ W["shared_expert_gate"])
        out += gam[:, None] * ysh
        shared = (ysh, csh, gam)
    balance, z, f = _losses(logits, cfg, p)
    return Result(out, comb, p, p.kept.sum(0), int(p.kept.sum()), balance, z,
                  dict(logits=logits, ys=ys, shared=shared, f=f, x=x, W=W, bf16_compute=bf16_compute))


def backward(res: Result, cfg: Config, dout):
    """dL/dx and dL/dW for L = sum(out * dout) + cfg.balance_coef*balance + cfg.z_coef*z."""
    c = res.cache
    x, W, logits = c["x"], c["W"], c["logits"]
    dout = np.asarray(dout, np.float64)
    T, H = x.shape
    E = W["router"].shape[0]
    dx = np.zeros_like(x)
    grads = {k: np.zeros_like(v) for k, v in W.items()}
    gw = np.zeros((T, E))
    for e, (idx, y, cache) in c["ys"].items():
        gw[idx, e] = (dout[idx] * y).sum(1)
        dy = res.combine[idx, e:e + 1] * dout[idx]
        dxe, dg, du, dd = _ffn_backward(x[idx], W["gate"][e], W["up"][e], W["down"][e], cache, dy,
                                        c["bf16_compute"])
        np.add.at(dx, idx, dxe)
        grads["gate"][e] += dg
        grads["up"][e] += du
        grads["down"][e] += dd
    dlogits = _combine_backward(logits, cfg, res.plan, gw)
    dlogits = dlogits + _losses_backward(logits, cfg, c["f"], cfg.balance_coef, cfg.z_coef)
    grads["router"] += dlogits.T @ x
    dx += dlogits @ W["router"]
    if c["shared"] is not None:
        ysh, csh, gam = c["shared"]
        dgam = (dout * ysh).sum(1)
        dz = dgam * gam * (1 - gam)
        grads["shared_expert_gate"] += dz @ x
        dx += dz[:, None] * W["shared_expert_gate"][None, :]
        dxs, dg, du, dd = _ffn_backward(x, W["shared_gate"], W["shared_up"], W["shared_down"], csh,
                                        gam[:, None] * dout, c["bf16_compute"])
        dx += dxs
        grads["shared_gate"] += dg
        grads["shared_up"] += du
        grads["shared_down"] += dd
    return dx, grads


def loss(x, W, cfg: Config, R, fixed_plan: Plan) -> float:
    r = forward(x, W, cfg, fixed_plan)
    return float((r.out * R).sum()) + cfg.balance_coef * r.balance_loss + cfg.z_coef * r.z_loss


def random_weights(rng, *, hidden, ffn, experts, shared_ffn=0, router_scale=1.0, dtype=np.float32):
    """Weights giving outputs of order 1 for x ~ N(0, 1)."""
    H, F, E = hidden, ffn, experts
    W = {"router": rng.standard_normal((E, H)) * router_scale / math.sqrt(H),
         "gate": rng.standard_normal((E, F, H)) / math.sqrt(H),
         "up": rng.standard_normal((E, F, H)) / math.sqrt(H),
         "down": rng.standard_normal((E, H, F)) / math.sqrt(F)}
    if shared_ffn:
        Fs = shared_ffn
        W["shared_gate"] = rng.standard_normal((Fs, H)) / math.sqrt(H)
        W["shared_up"] = rng.standard_normal((Fs, H)) / math.sqrt(H)
        W["shared_down"] = rng.standard_normal((H, Fs)) / math.sqrt(Fs)
        W["shared_expert_gate"] = rng.standard_normal(H) / math.sqrt(H)
    return {k: v.astype(dtype) for k, v in W.items()}
