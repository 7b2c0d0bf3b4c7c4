"""orthogonalize, the Muon step and the AdamW groups against plain references."""

from __future__ import annotations

import copy
import math
import shutil

import pytest
import torch

from nanogpt_course.optim import (
    NEWTON_SCHULZ_COEFFS,
    POLAR_EXPRESS_COEFFS,
    MuonAdamW,
    momentum_warmup,
    orthogonalize,
    shape_lr_scale,
)
from nanogpt_course.optim.muon import NEWTON_SCHULZ_BAND, POLAR_EXPRESS_BAND, coefficients

BANDS = {"newton_schulz": NEWTON_SCHULZ_BAND, "polar_express": POLAR_EXPRESS_BAND}
# the documented bands hold for singular values with sigma / ||G||_F above these
FLOORS = {"newton_schulz": 3e-3, "polar_express": 1e-3}
SHAPES = {"square": (32, 32), "tall": (48, 16), "wide": (16, 48), "batched": (3, 4, 24, 16)}


def spectrum_matrix(shape, seed=0, smallest=1e-2):
    """Random matrices U diag(s) V^T with singular values log-spaced in [smallest, 1]."""
    g = torch.Generator().manual_seed(seed)
    *lead, m, n = shape
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(*lead, m, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(*lead, n, k, generator=g, dtype=torch.float64))
    s = torch.logspace(math.log10(smallest), 0, k, dtype=torch.float64)
    return (U * s) @ V.mT


def polar(G):
    U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    return U @ Vh


@pytest.mark.parametrize("method", ["newton_schulz", "polar_express"])
@pytest.mark.parametrize("kind", list(SHAPES))
def test_orthogonalize_band_and_alignment(kind, method):
    for G in (spectrum_matrix(SHAPES[kind]).float(),
              torch.randn(SHAPES[kind], generator=torch.Generator().manual_seed(1))):
        O = orthogonalize(G, method=method)
        assert O.shape == G.shape and O.dtype == G.dtype
        sv_in = torch.linalg.svdvals(G.double())
        sv_out = torch.linalg.svdvals(O.double())  # both descending: same order
        lo, hi = BANDS[method]
        rel = sv_in / G.double().norm(dim=(-2, -1), keepdim=True).squeeze(-1)
        big = rel >= FLOORS[method]
        assert big.float().mean() > 0.8
        assert sv_out[big].min() >= lo - 0.01 and sv_out.max() <= hi + 0.01
        target = polar(G)
        cos = (O.double() * target).sum((-2, -1)) / (O.double().norm(dim=(-2, -1))
                                                     * target.norm(dim=(-2, -1)))
        assert cos.min() >= 0.95, cos


def naive_newton_schulz(G, steps=5, coeffs=NEWTON_SCHULZ_COEFFS):
    """Textbook loop: one matrix, wide orientation, X <- a X + b (X X^T) X + c (X X^T)^2 X."""
    a, b, c = coeffs
    X = G.T if G.shape[0] > G.shape[1] else G
    X = X / (X.norm() + 1e-7)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + b * (A @ X) + c * (A @ A @ X)
    return X.T if G.shape[0] > G.shape[1] else X


def test_orthogonalize_equals_naive_loop_and_batches():
    g = torch.Generator().manual_seed(0)
    G = torch.randn(5, 24, 12, generator=g)
    batched = orthogonalize(G)
    for i in range(5):
        torch.testing.assert_close(batched[i], naive_newton_schulz(G[i]), atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(batched[i], orthogonalize(G[i]), atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(orthogonalize(G.mT), batched.mT)  # tall == wide, transposed


def test_polar_express_coefficients_and_steps():
    a, b, c = POLAR_EXPRESS_COEFFS[0]
    assert a == pytest.approx(8.28721201814563 / 1.01)
    assert b == pytest.approx(-23.595886519098837 / 1.01**3)
    assert c == pytest.approx(17.300387312530933 / 1.01**5)
    assert POLAR_EXPRESS_COEFFS[-1] == (1.875, -1.25, 0.375)  # the limit: unscaled
    assert coefficients("polar_express", 10)[8:] == [POLAR_EXPRESS_COEFFS[-1]] * 2
    assert coefficients("newton_schulz", 3) == [NEWTON_SCHULZ_COEFFS] * 3
    with pytest.raises(ValueError, match="orthogonalizer"):
        coefficients("svd", 5)
    # more Polar Express steps converge: 8 steps are much closer to U V^T than 5
    G = spectrum_matrix((32, 32), smallest=1e-2).float()
    err5 = (orthogonalize(G, 5, method="polar_express").double() - polar(G)).norm()
    err8 = (orthogonalize(G, 8, method="polar_express").double() - polar(G)).norm()
    assert err8 < 0.2 * err5


def test_orthogonalize_edge_cases():
    assert torch.equal(orthogonalize(torch.zeros(4, 6)), torch.zeros(4, 6))
    with pytest.raises(ValueError, match="matrix"):
        orthogonalize(torch.ones(5))
    G = spectrum_matrix((16, 32)).float()
    low = orthogonalize(G, dtype=torch.bfloat16)  # the GPU arithmetic, on the CPU
    assert low.dtype == torch.float32
    assert (low - orthogonalize(G)).abs().max() < 0.05


def test_shape_lr_scale_and_momentum_warmup():
    assert shape_lr_scale(3072, 768) == 2.0  # tall: MLP up-projection
    assert shape_lr_scale(768, 3072) == 1.0  # wide keeps lr
    assert shape_lr_scale(64, 64) == 1.0
    assert momentum_warmup(0) == pytest.approx(0.85)
    assert momentum_warmup(150) == pytest.approx(0.90)
    assert momentum_warmup(300) == momentum_warmup(10_000) == pytest.approx(0.95)


# ----------------------------------------------------------------------------- Muon step
A, B, C = NEWTON_SCHULZ_COEFFS


def f5(x):
    """Five Newton-Schulz steps on one singular value, by hand."""
    for _ in range(5):
        x = A * x + B * x**3 + C * x**5
    return x


def test_hand_computed_muon_steps_2x2_and_3x2():
    # G has singular values 4 and 3 (||G||_F = 5): NS maps 0.8 -> f5(0.8), 0.6 -> f5(0.6)
    assert f5(0.8) == pytest.approx(1.1192039299160428)
    assert f5(0.6) == pytest.approx(0.722876168617117)
    lr, beta, wd = 0.1, 0.9, 0.1
    for rows in (2, 3):
        W0 = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])[:rows]
        G = torch.tensor([[0.0, 3.0], [4.0, 0.0], [0.0, 0.0]])[:rows]
        O = torch.tensor([[0.0, f5(0.6)], [f5(0.8), 0.0], [0.0, 0.0]])[:rows]
        scale = math.sqrt(max(1.0, rows / 2))  # 1 for 2x2, sqrt(1.5) for 3x2
        W = torch.nn.Parameter(W0.clone())
        opt = MuonAdamW([{"kind": "muon", "params": [W], "lr": lr, "momentum": beta,
                          "weight_decay": wd}])
        # step 1: M = (1 - beta) G = 0.1 G; U = (1 - beta) G + beta M = 0.19 G; U / ||U|| = G / 5
        W.grad = G.clone()
        opt.step()
        W1 = W0 * (1 - lr * wd) - lr * scale * O
        torch.testing.assert_close(W.detach(), W1, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(opt.state[W]["momentum_buffer"], 0.1 * G)
        # step 2, same gradient: M = 0.9 * 0.1 G + 0.1 G = 0.19 G; U = 0.271 G: same direction
        opt.step()
        torch.testing.assert_close(W.detach(), W1 * (1 - lr * wd) - lr * scale * O,
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(opt.state[W]["momentum_buffer"], 0.19 * G)


def reference_muon(params, grads_per_step, hp_per_step, equilibrate=False, renorm=False,
                   beta2=None):
    """Per-matrix Muon, written plainly: a list of matrices, one loop per matrix (and one
    per row or column for the optional row equilibration and variance reduction)."""
    params = [p.clone() for p in params]
    bufs = [torch.zeros_like(p) for p in params]
    seconds = [None] * len(params)
    for grads, hp in zip(grads_per_step, hp_per_step):
        for j, (p, g) in enumerate(zip(params, grads)):
            bufs[j] = hp["momentum"] * bufs[j] + (1 - hp["momentum"]) * g
            u = (1 - hp["momentum"]) * g + hp["momentum"] * bufs[j]
            if equilibrate:  # every row to the mean row norm
                mean_row = u.norm() / math.sqrt(u.shape[0])
                u = torch.stack([row * mean_row / row.norm() for row in u])
            o = naive_newton_schulz(u)
            if renorm:
                o = o * math.sqrt(min(o.shape)) / o.norm()
            if beta2 is not None:  # one running mean square per neuron of the long side
                lines = o if o.shape[0] >= o.shape[1] else o.T
                v = torch.stack([(line**2).mean() for line in lines])
                seconds[j] = (1 - beta2) * v if seconds[j] is None else \
                    beta2 * seconds[j] + (1 - beta2) * v
                scaled = torch.stack([line / seconds[j][i].sqrt() for i, line in enumerate(lines)])
                scaled = scaled if o.shape[0] >= o.shape[1] else scaled.T
                o = scaled * o.norm() / scaled.norm()
            scale = max(1.0, p.shape[0] / p.shape[1]) ** 0.5
            if hp["cautious"]:
                decay = p * ((o * p) > 0)
            else:
                decay = p
            params[j] = p - hp["lr"] * hp["wd"] * decay - hp["lr"] * scale * o
    return params


def run_muon_adamw(init, grads_per_step, hp_per_step, **group_options):
    """MuonAdamW over one muon group of copies of ``init``, with the schedule ``hp_per_step``
    written into the group each step (as the trainer does); returns (params, optimizer)."""
    params = [torch.nn.Parameter(p.clone()) for p in init]
    opt = MuonAdamW([{"kind": "muon", "params": params, **group_options}])
    for gs, hp in zip(grads_per_step, hp_per_step):
        group = opt.param_groups[0]
        group["lr"], group["momentum"], group["weight_decay"] = hp["lr"], hp["momentum"], hp["wd"]
        for p, gr in zip(params, gs):
            p.grad = gr.clone()
        opt.step()
    return params, opt


@pytest.mark.parametrize("cautious", [False, True])
def test_muon_equals_per_matrix_reference(cautious):
    g = torch.Generator().manual_seed(3)
    shapes = [(16, 16), (16, 16), (48, 16), (16, 48), (48, 16), (16, 16)]
    init = [torch.randn(s, generator=g) * 0.3 for s in shapes]
    steps = 6
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(steps)]
    # a schedule written into param_groups each step, as the trainer does
    hps = [{"lr": 0.02 * (1 - k / 10), "momentum": momentum_warmup(k, warmup_steps=4),
            "wd": 0.05 * k, "cautious": cautious} for k in range(steps)]
    params, _ = run_muon_adamw(init, grads, hps, cautious_weight_decay=cautious)
    expected = reference_muon(init, grads, hps)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("option", ["row_equilibrate", "renormalize", "variance_beta2", "all"])
def test_muon_refinements_equal_per_matrix_reference(option):
    """MuonEq, Muon+ and NorMuon (each off by default) against the plain loops above, over
    six steps of a schedule, on square, tall and wide matrices batched by shape."""
    g = torch.Generator().manual_seed(7)
    shapes = [(16, 16), (48, 16), (16, 48), (48, 16)]
    init = [torch.randn(s, generator=g) * 0.3 for s in shapes]
    grads = [[torch.randn(s, generator=g) * (1 + torch.arange(s[0])[:, None] / 4)
              for s in shapes] for _ in range(6)]  # rows of unequal scale
    hps = [{"lr": 0.02, "momentum": 0.9, "wd": 0.1, "cautious": False} for _ in range(6)]
    on = {"row_equilibrate": option in ("row_equilibrate", "all"),
          "renormalize": option in ("renormalize", "all"),
          "variance_beta2": 0.9 if option in ("variance_beta2", "all") else None}
    params, opt = run_muon_adamw(init, grads, hps, **on)
    expected = reference_muon(init, grads, hps, equilibrate=on["row_equilibrate"],
                              renorm=on["renormalize"], beta2=on["variance_beta2"])
    plain = reference_muon(init, grads, hps)
    for p, e, q in zip(params, expected, plain):
        torch.testing.assert_close(p.detach(), e, atol=1e-5, rtol=1e-5)
        assert (e - q).abs().max() > 1e-4  # the option changes the update
    if on["variance_beta2"] is not None:
        assert opt.state[params[1]]["second_moment"].shape == (48, 1)  # tall: per row
        assert opt.state[params[2]]["second_moment"].shape == (1, 48)  # wide: per column


def test_variance_reduce_evens_out_neurons_and_keeps_the_norm():
    from nanogpt_course.optim.muon import second_moment_shape, variance_reduce

    g = torch.Generator().manual_seed(8)
    O = torch.randn(2, 24, 8, generator=g) * torch.linspace(0.2, 3.0, 24)[:, None]
    V = torch.zeros(second_moment_shape(O.shape))
    out = variance_reduce(O, V, beta2=0.0)  # V = this step's mean squares: rows all equal
    rows = out.norm(dim=-1)
    torch.testing.assert_close(rows, rows.mean(dim=-1, keepdim=True).expand_as(rows))
    torch.testing.assert_close(out.norm(dim=(-2, -1)), O.norm(dim=(-2, -1)))
    torch.testing.assert_close(V, O.square().mean(dim=-1, keepdim=True))
    with pytest.raises(ValueError, match="does not fit"):
        variance_reduce(O, torch.zeros(2, 1, 8), beta2=0.5)
    with pytest.raises(ValueError, match="variance_beta2"):
        MuonAdamW([{"kind": "muon", "params": [torch.nn.Parameter(torch.ones(2, 2))],
                    "variance_beta2": 1.0}])


def test_equilibrate_rows_and_renormalize():
    from nanogpt_course.optim.muon import equilibrate_rows, renormalize

    g = torch.Generator().manual_seed(9)
    U = torch.randn(3, 10, 6, generator=g) * torch.logspace(-2, 1, 10)[:, None]
    E = equilibrate_rows(U)
    torch.testing.assert_close(E.norm(dim=-1), (U.norm(dim=(-2, -1)) / 10**0.5)[:, None]
                               .expand(3, 10))
    Q = polar(torch.randn(10, 6, generator=g)).float()  # exactly orthogonal: unchanged
    torch.testing.assert_close(renormalize(Q), Q)
    torch.testing.assert_close(renormalize(3 * U).norm(dim=(-2, -1)), torch.full((3,), 6**0.5))


def test_batched_equals_one_matrix_at_a_time():
    g = torch.Generator().manual_seed(4)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in [(8, 8)] * 4 + [(24, 8)]]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    batched = MuonAdamW([{"kind": "muon", "params": params}])
    single = MuonAdamW([{"kind": "muon", "params": twins}], batch_same_shape=False)
    for _ in range(3):
        for p, q in zip(params, twins):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        batched.step()
        single.step()
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_adamw_groups_equal_torch_adamw():
    g = torch.Generator().manual_seed(5)
    shapes = [(10, 6), (7,), (3, 4, 5), (1,)]
    ours = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]

    def groups(ps):
        return [{"params": ps[:2], "lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-10,
                 "weight_decay": 0.1},
                {"params": ps[2:], "lr": 0.003, "betas": (0.9, 0.999), "eps": 1e-8,
                 "weight_decay": 0.0}]

    opt = MuonAdamW([{**grp, "kind": "adamw"} for grp in groups(ours)])
    ref = torch.optim.AdamW(groups(theirs))
    for step in range(8):
        for k, (p, q) in enumerate(zip(ours, theirs)):
            if k == 1 and step in (2, 3):  # a parameter that skips steps (no gradient)
                p.grad = q.grad = None
                continue
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, atol=0, rtol=1e-6)
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], ref.state[q]["exp_avg_sq"])
    assert float(opt.state[ours[1]]["step"]) == 6.0


def test_muon_groups_validate():
    with pytest.raises(ValueError, match="non-matrix"):
        MuonAdamW([{"kind": "muon", "params": [torch.nn.Parameter(torch.ones(3))]}])
    with pytest.raises(ValueError, match="kind"):
        MuonAdamW([{"params": [torch.nn.Parameter(torch.ones(3))]}])
    p = torch.nn.Parameter(torch.ones(2, 2))
    with pytest.raises(ValueError, match="twice"):
        MuonAdamW([{"kind": "muon", "params": [p]}, {"kind": "adamw", "params": [p]}])
    opt = MuonAdamW([{"kind": "muon", "params": [p], "lr": 0.5}])
    assert opt.param_groups[0]["initial_lr"] == 0.5
    assert copy.deepcopy(opt.param_groups[0]["momentum"]) == 0.95


# ----------------------------------------------------------------------------- numerics of the fast path
def test_orthogonalize_dtype_context_and_bf16_direction():
    from nanogpt_course.optim.muon import apply_muon_step_, muon_direction, orthogonalize_dtype

    G = spectrum_matrix((3, 24, 16), seed=2).float()
    exact = orthogonalize(G)  # fp32 on the CPU
    with orthogonalize_dtype(torch.bfloat16):  # the GPU's arithmetic, on the CPU
        emulated = orthogonalize(G)
        assert torch.equal(orthogonalize(G, dtype=torch.float32), exact)  # explicit wins
        with orthogonalize_dtype(torch.float32):  # nests
            assert torch.equal(orthogonalize(G), exact)
        assert torch.equal(orthogonalize(G), emulated)
        buf = torch.zeros_like(G)
        direction = muon_direction(G, buf, momentum=0.9)
    assert torch.equal(emulated, orthogonalize(G, dtype=torch.bfloat16))
    assert torch.equal(orthogonalize(G), exact) and not torch.equal(emulated, exact)
    # bf16 arithmetic, but the direction comes back in the momentum's dtype (the last
    # matmul writes fp32 directly), so the weights are updated with same-dtype kernels
    assert direction.dtype == torch.float32 and direction.shape == G.shape
    assert 0 < (direction - exact).norm() / exact.norm() < 0.03  # bf16-level, not fp32
    # adding a bf16 direction to fp32 weights == adding its exact fp32 copy, with decay
    W = torch.randn(3, 24, 16, generator=torch.Generator().manual_seed(3))
    rounded = direction.bfloat16()
    for cautious in (False, True):
        a, b = W.clone(), W.clone()
        apply_muon_step_(a, rounded, lr=0.1, weight_decay=0.2, cautious=cautious)
        apply_muon_step_(b, rounded.float(), lr=0.1, weight_decay=0.2, cautious=cautious)
        assert a.dtype == torch.float32 and torch.equal(a, b)


@pytest.mark.parametrize("shape", [(4, 128, 128), (2, 256, 96), (2, 96, 256)])
def test_bf16_orthogonalize_error_stays_at_one_rounding(shape):
    # bf16 Newton-Schulz against the same iteration in float64. Measured for these shapes
    # (seed 0): the library's X <- P X with P's diagonal summed in fp32 and rounded once
    # 0.89-1.06%; the earlier X <- aX + BX (B rounded alone) 1.18-1.27%; X <- (B + aI) X
    # with B rounded first (two roundings of the diagonal) 2.5-2.7%. The bound keeps both
    # older forms out.
    G = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    ref = orthogonalize(G.double(), dtype=torch.float64)
    err = (orthogonalize(G, dtype=torch.bfloat16).double() - ref).norm() / ref.norm()
    assert err < 0.0113, float(err)


def test_quintic_diagonal_is_p_summed_in_wide_precision():
    # P = aI + bA + cA^2 for symmetric A: baddbmm's bf16 P everywhere except the diagonal,
    # which is a + b A_ii + c |A_i|^2 summed in fp32 and rounded once
    from nanogpt_course.optim.muon import NEWTON_SCHULZ_COEFFS, _newton_schulz_steps

    a, b, c = NEWTON_SCHULZ_COEFFS
    X = torch.randn(3, 16, 40, generator=torch.Generator().manual_seed(4)) / 15
    Xb = X.bfloat16()
    A = torch.bmm(Xb, Xb.mT)
    exact = (a * torch.eye(16, dtype=torch.float64) + b * A.double()
             + c * torch.bmm(A.double(), A.double()))
    got = _newton_schulz_steps(Xb, [(a, b, c)], tall=False, out_dtype=torch.float64)
    want = torch.bmm(exact.bfloat16().double(), Xb.double())  # P rounded once, entrywise
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    # and for fp32 inputs it is the plain quintic a X + b A X + c A^2 X
    A32 = torch.bmm(X, X.mT)
    ref = a * X + b * torch.bmm(A32, X) + c * torch.bmm(torch.bmm(A32, A32), X)
    assert torch.allclose(_newton_schulz_steps(X, [(a, b, c)], tall=False), ref, atol=1e-5)


def test_apply_muon_step_on_a_list_equals_the_stacked_tensor():
    from nanogpt_course.optim.muon import apply_muon_step_

    g = torch.Generator().manual_seed(5)
    W = torch.randn(4, 6, 3, generator=g)
    D = torch.randn(4, 6, 3, generator=g)
    for wd, cautious in ((0.0, False), (0.3, False), (0.3, True)):
        stacked, listed = W.clone(), [w.clone() for w in W]
        apply_muon_step_(stacked, D, lr=0.1, weight_decay=wd, cautious=cautious)
        apply_muon_step_(listed, D, lr=0.1, weight_decay=wd, cautious=cautious)
        assert torch.equal(torch.stack(listed), stacked)
    with pytest.raises(ValueError):
        apply_muon_step_([W[0].clone()], D, lr=0.1)  # 1 tensor, 4 directions


def test_frobenius_norm_is_accurate_on_cpu():
    # the normalization uses a pairwise sum on the CPU: torch's fp32 vector_norm there is
    # ~4e-5 off on a 768 x 3072 matrix, and Newton-Schulz output moves with its input scale
    from nanogpt_course.optim.muon import _frobenius_norm

    X = torch.randn(2, 768, 3072, generator=torch.Generator().manual_seed(0))
    exact = X.double().square().sum(dim=(-2, -1), keepdim=True).sqrt()
    assert ((_frobenius_norm(X).double() - exact).abs() / exact).max() < 1e-6


# ----------------------------------------------------------------------------- fused kernels
@pytest.fixture
def fused_on_cpu(monkeypatch):
    """Route every muon_direction through optim.fused on the CPU (as CUDA does for big
    buckets), with a fresh compile cache, and restore the module state afterwards."""
    from nanogpt_course.optim import fused

    monkeypatch.setattr(fused, "_compiled", {})
    monkeypatch.setattr(fused, "_broken", [])
    monkeypatch.setattr(fused, "use_fused", lambda t: not fused._broken)
    return fused


def _direction_and_buffer(seed=6, shape=(3, 12, 20), momentum=0.9, grad_scale=None):
    from nanogpt_course.optim.muon import muon_direction

    g = torch.Generator().manual_seed(seed)
    G, buf = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    out = muon_direction(G, buf, momentum=momentum, grad_scale=grad_scale)
    return out, buf


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile on the CPU needs a C compiler")
def test_fused_prologue_compiled_equals_eager(fused_on_cpu):
    # the compiled prologue (momentum in place, Nesterov, norm, cast) must be the eager
    # function's math; values arrive as 0-d tensors, so new momenta do not recompile
    from nanogpt_course.optim import fused

    want, want_buf = _direction_and_buffer(grad_scale=0.5)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fused, "use_fused", lambda t: False)
        eager, eager_buf = _direction_and_buffer(grad_scale=0.5)
    assert not fused._broken, fused._broken
    assert len(fused._compiled) == 1
    assert torch.allclose(want_buf, eager_buf, atol=1e-6)  # the buffer was updated in place
    assert torch.allclose(want, eager, atol=1e-5)
    for momentum in (0.85, 0.95):  # another value: same compiled function, no error
        _direction_and_buffer(momentum=momentum, grad_scale=torch.tensor(0.25))
    assert not fused._broken and len(fused._compiled) == 1


def test_fused_compile_failure_falls_back_to_eager_once(fused_on_cpu, monkeypatch):
    from nanogpt_course.optim import fused

    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no triton here")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(RuntimeWarning, match="fused kernels are off.*no triton here"):
        got, got_buf = _direction_and_buffer()
    assert fused._broken and not fused.use_fused(torch.zeros(1))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fused, "use_fused", lambda t: False)
        want, want_buf = _direction_and_buffer()
    # the same math (0-d tensor vs float weights may differ in the last bit); a second,
    # eager application of the momentum after a half-run compiled one would be far off
    assert torch.allclose(got_buf, want_buf, rtol=0, atol=1e-6)
    assert torch.allclose(got, want, rtol=0, atol=1e-5)


def test_fused_is_off_on_cpu_small_tensors_and_by_switch(monkeypatch):
    from nanogpt_course.optim import fused

    assert not fused.use_fused(torch.zeros(fused.FUSED_MIN_NUMEL))  # CPU: always eager
    monkeypatch.setattr(fused, "ENABLED", False)
    assert not fused.use_fused(torch.zeros(1))
