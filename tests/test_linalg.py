"""immulib.linalg: condition numbers under both conventions, rank, Gram matrices, probe Hessian."""

import math

import numpy as np
import pytest
import torch

from immulib import linalg


def random_matrix(rng, n, rank):
    return rng.standard_normal((n, rank)) @ rng.standard_normal((rank, n))


def test_pinv_kappa_equals_norm_times_pinv_norm_on_many_matrices():
    rng = np.random.default_rng(0)
    for i in range(300):
        n = int(rng.integers(1, 12))
        S = random_matrix(rng, n, n if i % 2 else int(rng.integers(1, n + 1)))
        expected = np.linalg.norm(S, 2) * np.linalg.norm(np.linalg.pinv(S), 2)
        assert linalg.condition_number(S) == pytest.approx(expected, rel=1e-6)


def test_kappa_of_diagonal_and_scale_invariance():
    S = np.diag([8.0, 2.0, 0.5])
    assert linalg.condition_number(S) == pytest.approx(16.0)
    assert linalg.condition_number(1e-9 * S) == pytest.approx(16.0)
    assert linalg.condition_number(np.eye(4)) == 1.0


def test_conventions_agree_on_well_conditioned_spd():
    rng = np.random.default_rng(1)
    for _ in range(50):
        X = rng.standard_normal((40, 8))
        K = X.T @ X
        assert linalg.condition_number(K, convention="shifted") == pytest.approx(
            linalg.condition_number(K), rel=1e-5
        )


def test_conventions_disagree_on_rank_deficient_matrix():
    # eigenvalues (10, 1, 0): pinv ignores the zero; shifted keeps 0 + tiny noise if above 1e-6
    S = np.diag([10.0, 1.0, 0.0])
    assert linalg.condition_number(S) == pytest.approx(10.0)
    assert linalg.condition_number(S, convention="shifted") == pytest.approx(
        10.0, rel=1e-5
    )
    S_noisy = np.diag([10.0, 1.0, 1e-15])
    assert linalg.condition_number(S_noisy) == pytest.approx(10.0)
    assert linalg.condition_number(S_noisy, convention="shifted") > 1e6


def test_shifted_matches_authors_formula():
    rng = np.random.default_rng(2)
    for _ in range(100):
        # exact zeros: they land exactly on 1e-6 after the shift and are dropped
        lam = np.where(rng.random(9) < 0.4, 0.0, np.exp(rng.uniform(-3, 6, 9)))
        lam[0] = 1.0
        expected = (lam.max() + 1e-6) / (lam[lam > 0].min() + 1e-6)
        got = linalg.condition_number(
            np.diag(rng.permutation(lam)), convention="shifted"
        )
        assert got == pytest.approx(expected, rel=1e-12)
        # full rank, eigenvalues far above the shift: the authors' formula through numpy
        X = rng.standard_normal((30, 9))
        K = X.T @ X
        shifted = np.linalg.eigvalsh(K + 1e-6 * np.eye(9))
        assert linalg.condition_number(K, convention="shifted") == pytest.approx(
            shifted.max() / shifted[shifted > 1e-6].min(), rel=1e-9
        )


def test_rank_tol_controls_what_counts_as_zero():
    S = np.diag([1.0, 1e-3, 1e-9])
    assert linalg.condition_number(S) == pytest.approx(1e9)
    assert linalg.condition_number(S, rank_tol=1e-6) == pytest.approx(1e3)
    assert linalg.numerical_rank(S) == 3
    assert linalg.numerical_rank(S, rank_tol=1e-6) == 2


def test_numerical_rank_matches_numpy():
    rng = np.random.default_rng(3)
    for _ in range(100):
        n = int(rng.integers(1, 15))
        r = int(rng.integers(0, n + 1))
        S = random_matrix(rng, n, r) if r else np.zeros((n, n))
        assert linalg.numerical_rank(S) == np.linalg.matrix_rank(S)


def test_float32_input_is_computed_in_float64():
    S = torch.diag(torch.tensor([1e4, 1.0, 1e-3], dtype=torch.float32))
    assert linalg.condition_number(S) == pytest.approx(1e7, rel=1e-6)
    assert linalg.gram(S).dtype == torch.float64


def test_gram_and_probe_hessian():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((30, 6))
    K = linalg.gram(X)
    assert torch.equal(K, K.T)
    np.testing.assert_allclose(K.numpy(), X.T @ X, rtol=1e-12)
    theta = rng.standard_normal((6, 4))
    H = linalg.probe_hessian(theta, K)
    assert H.shape == (4, 4)
    np.testing.assert_allclose(H.numpy(), theta.T @ X.T @ X @ theta, rtol=1e-10)
    # gradients flow through theta
    t = torch.tensor(theta, requires_grad=True)
    linalg.probe_hessian(t, K).trace().backward()
    np.testing.assert_allclose(t.grad.numpy(), 2 * (X.T @ X) @ theta, rtol=1e-10)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.ones((2, 3)), "square"),
        (np.ones(3), "2-dimensional"),
        (np.zeros((0, 0)), "empty"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN or infinite"),
        (np.array([[np.inf, 0.0], [0.0, 1.0]]), "NaN or infinite"),
        (np.zeros((3, 3)), "all zeros"),
    ],
)
def test_condition_number_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        linalg.condition_number(bad)


def test_condition_number_argument_errors():
    with pytest.raises(ValueError, match="symmetric"):
        linalg.condition_number(
            np.array([[1.0, 2.0], [0.0, 1.0]]), convention="shifted"
        )
    with pytest.raises(ValueError, match="convention"):
        linalg.condition_number(np.eye(2), convention="svd")
    with pytest.raises(TypeError, match="rank_tol"):
        linalg.condition_number(np.eye(2), rank_tol="small")
    with pytest.raises(ValueError, match="rank_tol"):
        linalg.condition_number(np.eye(2), rank_tol=-1.0)
    with pytest.raises(ValueError, match="rank_tol applies only"):
        linalg.condition_number(np.eye(2), convention="shifted", rank_tol=1e-3)
    with pytest.raises(TypeError, match="S must be"):
        linalg.condition_number("not a matrix")
    with pytest.raises(TypeError, match="array of numbers"):
        linalg.condition_number(np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(TypeError, match="real"):
        linalg.condition_number(torch.eye(2, dtype=torch.complex128))


def test_probe_hessian_errors():
    with pytest.raises(ValueError, match="rows"):
        linalg.probe_hessian(np.ones((3, 2)), np.eye(4))
    with pytest.raises(ValueError, match="K must be symmetric"):
        linalg.probe_hessian(np.eye(2), np.array([[1.0, 1.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="K must be square"):
        linalg.probe_hessian(np.eye(2), np.ones((2, 3)))


def test_every_public_function_names_an_existing_chapter_label():
    import inspect
    import re
    from pathlib import Path

    from immulib import descent, metrics, regularizers

    book = Path(__file__).resolve().parent.parent / "book"
    labels = set(
        re.findall(
            r"^\(([\w-]+)\)=", "\n".join(p.read_text() for p in book.glob("*.md")), re.M
        )
    )
    for module in (linalg, descent, regularizers, metrics):
        for name in module.__all__:
            obj = getattr(module, name)
            if (
                not (inspect.isfunction(obj) or inspect.isclass(obj))
                or obj.__module__ != module.__name__
            ):
                continue
            found = re.findall(r"\{ref\}`([\w-]+)`", obj.__doc__ or "")
            assert found, f"{module.__name__}.{name}: no chapter label in its docstring"
            assert set(found) <= labels, (
                f"{module.__name__}.{name}: unknown label(s) {set(found) - labels}"
            )


def _spd_batch(seed, B=4, D=40, kappa=1e5):
    """SPD matrices with eigenvalues spread geometrically over [1, κ] and random eigenbases."""
    gen = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(B, D, D, generator=gen, dtype=torch.float64)).Q
    lam = torch.logspace(0, np.log10(kappa), D, dtype=torch.float64)
    lam = lam * (1 + 0.01 * torch.rand(B, D, generator=gen, dtype=torch.float64))
    H = (Q * lam[:, None, :]) @ Q.mT
    return (H + H.mT) / 2


def test_extreme_eigensolver_matches_eigh_cold_and_warm_and_counts_fallbacks():
    H = _spd_batch(0)
    solver = linalg.ExtremeEigensolver()
    for step in range(3):  # a cold start, then warm starts along a slowly moving batch
        if step:
            gen = torch.Generator().manual_seed(step)
            E = 1e-3 * torch.randn(H.shape, generator=gen, dtype=torch.float64)
            T = torch.eye(H.shape[-1], dtype=torch.float64) + E
            H = T.mT @ H @ T
            H = (H + H.mT) / 2
        lam, V = torch.linalg.eigh(H)
        out = solver(H, "x")
        torch.testing.assert_close(out["top"], lam[:, -2:], rtol=1e-8, atol=0)
        torch.testing.assert_close(out["bottom"], lam[:, 0], rtol=1e-8, atol=0)
        cos_top = (out["top_vectors"][..., -1] * V[..., -1]).sum(-1).abs()
        cos_low = (out["bottom_vector"][..., 0] * V[..., 0]).sum(-1).abs()
        assert float((1 - cos_top).abs().max()) < 1e-12
        assert float((1 - cos_low).abs().max()) < 1e-12
    assert solver.stats["fallbacks"] == 0 and solver.stats["calls"] == 3
    warm = solver.stats["iterations"]
    # one iteration cannot converge from a random start: every element falls back, counted
    strict = linalg.ExtremeEigensolver(max_iter=1)
    out = strict(_spd_batch(5), "y")
    lam = torch.linalg.eigvalsh(_spd_batch(5))
    assert strict.stats["fallbacks"] == 4
    torch.testing.assert_close(out["bottom"], lam[:, 0], rtol=1e-10, atol=0)
    assert warm > 0
    with pytest.raises(ValueError, match="too small"):
        linalg.ExtremeEigensolver()(torch.eye(8, dtype=torch.float64)[None], "z")
    with pytest.raises(ValueError, match="top"):
        solver(H, "x", top=3)


def test_partial_eigensolver_on_a_stacked_batch_is_bit_for_bit_two_calls():
    """The engine stacks H_P and H_H into one call: each element's eigenvalues and vectors must
    be those of a call on its own batch, bit for bit (warm starts included)."""
    A, B = _spd_batch(1, kappa=1e6), _spd_batch(2, kappa=1e3)
    D = A.shape[-1]
    top, low = torch.full((4,), D - 1), torch.full((4,), 0)
    one, two = linalg.PartialEigensolver(), linalg.PartialEigensolver()
    for _ in range(2):  # cold, then warm
        lam, vecs = one(torch.cat([A, B]), "AB", {"v": torch.cat([top, low])})
        lam_a, va = two(A, "A", {"v": top})
        lam_b, vb = two(B, "B", {"v": low})
        assert torch.equal(lam, torch.cat([lam_a, lam_b]))
        assert torch.equal(vecs["v"], torch.cat([va["v"], vb["v"]]))
    assert one.stats["matrices"] == two.stats["matrices"] == 16
    assert one.stats["calls"] == 2 and two.stats["calls"] == 4


def _full_and_singular_batches():
    """A full-rank batch (4 × D × D, κ = 1e8) and a singular one of rank D − 3, each with the
    index of its smallest nonzero eigenvalue."""
    H = _spd_batch(1, kappa=1e8)
    D = H.shape[-1]
    gen = torch.Generator().manual_seed(3)
    Q = torch.linalg.qr(torch.randn(4, D, D, generator=gen, dtype=torch.float64)).Q
    lam_s = torch.cat([torch.zeros(3), torch.logspace(0, 6, D - 3)]).to(torch.float64)
    S = (Q * lam_s[None, None, :]) @ Q.mT
    return H, D, (("full", H, 0), ("singular", (S + S.mT) / 2, 3))


def test_partial_eigensolver_matches_eigh_on_full_and_singular_batches_and_counts_fallbacks():
    # the singular batch's wanted vector is that of the smallest nonzero eigenvalue
    H, D, batches = _full_and_singular_batches()
    for name, M, low in batches:
        solver = linalg.PartialEigensolver()
        lam, V = torch.linalg.eigh(M)
        want = {"top": torch.full((4,), D - 1), "low": torch.full((4,), low)}
        for step in range(
            2
        ):  # a cold start (ones), then a warm start from the last call
            got, vecs = solver(M, name, want)
            torch.testing.assert_close(got, lam, rtol=0, atol=1e-12 * float(lam.max()))
            for key, j in (("top", D - 1), ("low", low)):
                cos = (vecs[key] * V[..., j]).sum(-1).abs()
                assert float((1 - cos).abs().max()) < 1e-10, (name, key, step)
        assert solver.stats == dict(calls=2, matrices=8, vectors=16, fallbacks=0)
    # an impossible residual test: every element falls back to eigh, counted, and is exact
    strict = linalg.PartialEigensolver(rtol=1e-300)
    got, vecs = strict(H, "x", {"top": torch.full((4,), D - 1)})
    lam, V = torch.linalg.eigh(H)
    assert strict.stats["fallbacks"] == 4
    torch.testing.assert_close(got, lam, rtol=0, atol=1e-12 * float(lam.max()))
    cos = (vecs["top"] * V[..., -1]).sum(-1).abs()
    assert float((1 - cos).abs().max()) < 1e-12
    with pytest.raises(ValueError, match="iters"):
        linalg.PartialEigensolver(iters=0)
    with pytest.raises(ValueError, match="rtol"):
        linalg.PartialEigensolver(rtol=-1.0)


def test_tridiagonal_eigensolver_matches_eigh_on_full_and_singular_batches():
    """The chosen eigenvalues (by ascending index, repeats allowed, in the order asked) and the
    one eigenvector from one Householder reduction, and every eigenvalue on request, against
    eigh; bad input refused by name."""
    H, D, batches = _full_and_singular_batches()
    for _, M, low in batches:
        solver = linalg.TridiagonalEigensolver()
        lam, V = torch.linalg.eigh(M)
        values = np.array([[D - 1, D - 2, low]] * 2 + [[low, D - 1, low]] * 2)
        vector = np.array([D - 1, D - 1, low, low])
        got = solver(M, values, vector)
        atol = 1e-12 * float(lam.max())
        want = torch.gather(lam, 1, torch.from_numpy(values))
        torch.testing.assert_close(got.values, want, rtol=0, atol=atol)
        torch.testing.assert_close(got.eigenvalues(), lam, rtol=0, atol=atol)
        cos = (got.vector * V[torch.arange(4), :, torch.from_numpy(vector)]).sum(-1)
        assert float((1 - cos.abs()).abs().max()) < 1e-10
        assert solver.stats == dict(calls=1, matrices=4, vectors=4, fallbacks=0)
    solver = linalg.TridiagonalEigensolver()
    with pytest.raises(TypeError, match="float64"):
        solver(H.float(), values, vector)
    with pytest.raises(ValueError, match="indices"):
        solver(H, values + D, vector)
    with pytest.raises(ValueError, match="vector"):
        solver(H, values, np.full(4, 1))


def test_tridiagonal_eigensolver_scales_and_falls_back_where_lapack_refuses(
    monkeypatch,
):
    """At |H| ~ 1e-200 and 1e200 the values are those of eigh (the matrix is divided by a
    power of two first); where bisection refuses (a cluster it cannot separate) the element
    gets a full eigh, counted, and the result is still exact."""
    from scipy.linalg import lapack

    H, D, _ = _full_and_singular_batches()
    values, vector = np.array([[D - 1, D - 2, 0]] * 4), np.full(4, D - 1)
    for factor in (1e-200, 1e200):
        M = H * factor
        lam = torch.linalg.eigvalsh(M)
        got = linalg.TridiagonalEigensolver()(M, values, vector)
        want = torch.gather(lam, 1, torch.from_numpy(values))
        atol = 1e-12 * float(lam.max())  # eigh's own accuracy: eps·‖H‖
        assert 0 < atol < math.inf
        torch.testing.assert_close(got.values, want, rtol=0, atol=atol)
        torch.testing.assert_close(got.eigenvalues(), lam, rtol=0, atol=atol)
    real = lapack.dstebz
    calls = []

    def refuses_once(*args):
        calls.append(1)
        out = real(*args)
        return (0, out[1], out[2], out[3], 2) if len(calls) == 1 else out

    monkeypatch.setattr(lapack, "dstebz", refuses_once)
    solver = linalg.TridiagonalEigensolver()
    got = solver(H, values, vector)
    lam, V = torch.linalg.eigh(H)
    assert solver.stats["fallbacks"] == 1 and len(calls) == 4
    want = torch.gather(lam, 1, torch.from_numpy(values))
    torch.testing.assert_close(got.values, want, rtol=0, atol=1e-12 * float(lam.max()))
    torch.testing.assert_close(
        got.eigenvalues(), lam, rtol=0, atol=1e-12 * float(lam.max())
    )
    cos = (got.vector * V[..., -1]).sum(-1).abs()
    assert float((1 - cos).abs().max()) < 1e-10
