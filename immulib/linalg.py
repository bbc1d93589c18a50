"""Condition numbers, numerical rank, Gram matrices and the probe Hessian.

Everything here works in float64: spectra of Gram matrices span many orders of magnitude, and in
float32 the smallest eigenvalues of a matrix with κ ≈ 10⁷ are pure rounding noise.

Derived in the chapter "Condition numbers and gradient descent" (``book/02_condition_numbers.md``);
the probe Hessian θᵀKθ is derived in "Linear probing and its Hessian".
"""

from __future__ import annotations

import contextlib
import math
from typing import Literal

import numpy as np
import torch

from ._validate import as_float64, choice, nonneg

__all__ = [
    "CONVENTIONS",
    "SHIFT",
    "ExtremeEigensolver",
    "PartialEigensolver",
    "TridiagonalEigensolver",
    "TridiagonalSpectra",
    "as_float64",
    "check_symmetric",
    "condition_number",
    "gram",
    "numerical_rank",
    "pow2_exponent",
    "probe_hessian",
    "rank_tolerance",
    "scaled_by_pow2",
    "singular_values",
    "unscale",
]

Convention = Literal["pinv", "shifted"]
CONVENTIONS: tuple[str, ...] = ("pinv", "shifted")

#: The ridge the authors' released code adds before taking eigenvalues (``"shifted"`` convention).
SHIFT = 1e-6

#: Relative tolerance for "symmetric": max |S - Sᵀ| <= SYM_RTOL * max |S|.
SYM_RTOL = 1e-10


# ---------------------------------------------------------------------------------------------
# extreme scales: work on x / 2^e, whose largest entry is in [0.5, 1), and scale back exactly

#: Binary exponents of float64: a normal number m·2^e has -1021 <= e <= 1024 (frexp convention).
_EPS = float(np.finfo(np.float64).eps)
_MIN_EXP, _MAX_EXP = np.finfo(np.float64).minexp + 1, np.finfo(np.float64).maxexp


def pow2_exponent(x) -> int:
    """The binary exponent e with max|x| = f·2^e, 0.5 <= f < 1 (0 for an all-zero x).

    Dividing by 2^e is exact, so spectra computed on x / 2^e and scaled back are the spectra of
    x, without the overflow of squares at 1e200 or their underflow at 1e-200.

    Chapter: {ref}`ch-condition-numbers`.
    """
    m = (
        float(x.detach().abs().max())
        if isinstance(x, torch.Tensor)
        else float(np.max(np.abs(x)))
    )
    return math.frexp(m)[1] if m > 0 else 0


def scaled_by_pow2(x: torch.Tensor, e: int) -> torch.Tensor:
    """x · 2^e computed exactly (in steps, so that 2^e itself never overflows).

    Chapter: {ref}`ch-condition-numbers`.
    """
    while e:
        step = max(-1000, min(1000, e))
        x = x * 2.0**step
        e -= step
    return x


def unscale(
    x_s: torch.Tensor, e: int, what: str, *, noise: float = 0.0
) -> torch.Tensor:
    """x_s · 2^e, or a ``ValueError`` naming ``what`` if that overflows or underflows float64.

    ``noise``: when max|x_s| <= noise the result is rounding noise of a zero and is returned
    (possibly as 0) without the underflow check.

    Chapter: {ref}`ch-condition-numbers`.
    """
    m = float(x_s.detach().abs().max())
    if m > noise:
        _representable(m, e, what, _RESCALE_HINT)
    return scaled_by_pow2(x_s, e)


def _representable(max_abs_scaled: float, e: int, what: str, hint: str) -> None:
    """Raise ValueError unless a result whose largest entry is max_abs_scaled · 2^e is a normal float64."""
    if max_abs_scaled == 0:
        return
    total = math.frexp(max_abs_scaled)[1] + e
    if total > _MAX_EXP:
        raise ValueError(
            f"{what} overflows float64 (its largest entry would be about 2^{total}); {hint}"
        )
    if total < _MIN_EXP:
        raise ValueError(
            f"{what} underflows float64 (its largest entry would be about 2^{total}); {hint}"
        )


_RESCALE_HINT = (
    "rescale the input (e.g. divide it by its largest entry: κ is scale-free)"
)


def _square(S, name: str) -> torch.Tensor:
    t = as_float64(S, name, ndim=2)
    if t.shape[0] != t.shape[1]:
        raise ValueError(f"{name} must be square, got shape {tuple(t.shape)}")
    return t


def check_symmetric(S: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` unless ``S`` is symmetric up to a relative tolerance of 1e-10.

    Chapter: {ref}`ch-condition-numbers`.
    """
    S = S.detach()
    scale = S.abs().max()
    if bool((S - S.T).abs().max() > SYM_RTOL * scale):
        asym = float((S - S.T).abs().max() / scale)
        raise ValueError(
            f"{name} must be symmetric (relative asymmetry {asym:.2e} > {SYM_RTOL:g}); "
            "pass (S + S.T) / 2 if the asymmetry is rounding noise"
        )


def singular_values(S) -> torch.Tensor:
    """Singular values of a real matrix in descending order, float64.

    Chapter: {ref}`ch-condition-numbers`.
    """
    return torch.linalg.svdvals(as_float64(S, "S", ndim=2).detach())


def rank_tolerance(
    sigma: torch.Tensor, shape: tuple[int, int], rank_tol: float | None
) -> float:
    """The cut-off below which a singular value counts as zero.

    ``rank_tol=None`` uses numpy's ``matrix_rank`` rule, σ_max · max(m, n) · eps(float64);
    a number is used as an absolute tolerance.

    Chapter: {ref}`ch-condition-numbers`.
    """
    if rank_tol is None:
        return float(sigma.max()) * max(shape) * float(np.finfo(np.float64).eps)
    return nonneg(rank_tol, "rank_tol")


def _scaled_svdvals(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Singular values of t / 2^e and e (so σ(t) = σ · 2^e), detached."""
    e = pow2_exponent(t)
    return torch.linalg.svdvals(scaled_by_pow2(t.detach(), -e)), e


def _scaled_tolerance(sigma_s: torch.Tensor, e: int, shape, rank_tol) -> float:
    if rank_tol is None:
        return rank_tolerance(
            sigma_s, shape, None
        )  # relative: the same in scaled units
    tol = rank_tolerance(sigma_s, shape, rank_tol)
    return float(scaled_by_pow2(torch.tensor(tol, dtype=torch.float64), -e))


def numerical_rank(S, *, rank_tol: float | None = None) -> int:
    """Number of singular values of ``S`` above the rank tolerance (see :func:`rank_tolerance`).

    Computed on S / 2^e (max entry in [0.5, 1)), so the rank does not depend on S's scale.

    Chapter: {ref}`ch-condition-numbers`.
    """
    t = as_float64(S, "S", ndim=2)
    sigma, e = _scaled_svdvals(t)
    return int((sigma > _scaled_tolerance(sigma, e, tuple(t.shape), rank_tol)).sum())


def condition_number(
    S, *, convention: Convention = "pinv", rank_tol: float | None = None
) -> float:
    """Condition number κ(S) of a square matrix (Eq. (1) of the paper).

    Chapter: {ref}`ch-condition-numbers`.

    Parameters
    ----------
    S
        Square real matrix (torch tensor or numpy array); converted to float64.
    convention
        ``"pinv"`` (default): Eq. (1), κ = ‖S‖₂‖S†‖₂ = σ_max / σ_min, where σ_min is the smallest
        singular value above the rank tolerance, so a rank-deficient S has a finite κ measured
        on its range. ``"shifted"``: the authors' released code. It requires a symmetric S, takes
        the eigenvalues of S + 10⁻⁶·I and divides the largest by the smallest one that exceeds
        10⁻⁶. On a full-rank S whose eigenvalues are all far above 10⁻⁶ both conventions agree;
        on a rank-deficient S they can differ by many orders of magnitude.
    rank_tol
        Only for ``"pinv"``: absolute tolerance for "nonzero". ``None`` uses numpy's
        ``matrix_rank`` rule, σ_max · n · eps.

    Raises
    ------
    ValueError
        For a non-square, empty, non-finite or all-zero S, an unknown convention, a
        non-symmetric S under ``"shifted"``, or a ``rank_tol`` that is not below σ_max.

    Notes
    -----
    Under ``"pinv"`` κ is computed on S / 2^e (e: the binary exponent of max|S|), so it is the
    same for S scaled by 1e-200 or 1e200. The ``"shifted"`` convention is not scale-free by
    definition (its 10⁻⁶ is absolute).
    """
    choice(convention, "convention", CONVENTIONS)
    t = _square(S, "S").detach()
    if not bool(t.abs().max() > 0):
        raise ValueError("S is all zeros: its condition number is undefined")
    if convention == "pinv":
        sigma, e = _scaled_svdvals(t)  # κ is scale-free: compute it on S / 2^e
        kept = sigma[sigma > _scaled_tolerance(sigma, e, tuple(t.shape), rank_tol)]
        if kept.numel() == 0:
            smax = float(scaled_by_pow2(sigma.max(), e))
            raise ValueError(
                f"rank_tol={rank_tol!r} is not below σ_max(S) = {smax:.6g}: every singular value "
                "counts as zero and κ is undefined; pass a smaller rank_tol, or None"
            )
        return float(kept.max() / kept.min())
    if rank_tol is not None:
        raise ValueError('rank_tol applies only to convention="pinv"')
    check_symmetric(t, "S")
    lam = torch.linalg.eigvalsh(
        (t + t.T) / 2 + SHIFT * torch.eye(t.shape[0], dtype=t.dtype)
    )
    kept = lam[lam > SHIFT]
    if kept.numel() == 0:
        raise ValueError("S has no eigenvalue above the 1e-6 shift: κ is undefined")
    return float(lam.max() / kept.min())


def gram(X) -> torch.Tensor:
    """The uncentred Gram matrix K = XᵀX of a data matrix X (rows are samples), float64.

    This is the paper's "covariance" K (Eq. (9)): no mean is subtracted and there is no 1/N.
    It is computed as 2^{2e}·(X/2^e)ᵀ(X/2^e), with 2^e the power of two at max|X|: bit-identical
    to XᵀX whenever that is representable, and a ``ValueError`` (never inf or 0) when the result
    would overflow or underflow float64 (X's entries near 1e±154 and beyond).

    Chapter: {ref}`ch-probe-hessian`.
    """
    t = as_float64(X, "X", ndim=2)
    e = pow2_exponent(t)
    ts = scaled_by_pow2(t, -e)
    K = ts.T @ ts
    _representable(
        float(K.detach().abs().max()), 2 * e, "the Gram matrix XᵀX", _RESCALE_HINT
    )
    K = scaled_by_pow2(K, 2 * e)
    return (K + K.T) / 2  # exactly symmetric, whatever the matmul's rounding


def probe_hessian(theta, K) -> torch.Tensor:
    """The Hessian θᵀKθ of the ℓ2 linear probe on features xᵀθ (Eq. (9), without the factor 2).

    ``theta`` is D_in × D_hid and ``K`` is the symmetric D_in × D_in Gram matrix. Gradients flow
    through ``theta`` (and ``K``) if they require them. Computed on θ and K divided by powers
    of two, like :func:`gram`: a ``ValueError`` instead of inf or 0 when the result would not
    be representable in float64.

    Chapter: {ref}`ch-probe-hessian`.
    """
    K = _square(K, "K")
    check_symmetric(K, "K")
    theta = as_float64(theta, "theta", ndim=2)
    if theta.shape[0] != K.shape[0]:
        raise ValueError(
            f"theta must have K.shape[0] = {K.shape[0]} rows, got shape {tuple(theta.shape)}"
        )
    et, eK = pow2_exponent(theta), pow2_exponent(K)
    ts = scaled_by_pow2(theta, -et)
    H = ts.T @ scaled_by_pow2(K, -eK) @ ts
    _representable(
        float(H.detach().abs().max()),
        2 * et + eK,
        "the probe Hessian θᵀKθ",
        _RESCALE_HINT,
    )
    H = scaled_by_pow2(H, 2 * et + eK)
    return (H + H.T) / 2


# ---------------------------------------------------------------------------------------------
# warm-started extreme eigenpairs of a batch of symmetric positive definite matrices


def _qr(S: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of the columns of S (Householder: orthonormal even if S is not of full
    column rank; the extra columns then span arbitrary directions, harmless for Rayleigh-Ritz)."""
    return torch.linalg.qr(S).Q


class PartialEigensolver:
    """Every eigenvalue of a batch of symmetric matrices (B × D × D, float64) and the eigenvectors
    of a few chosen ones: the eigenvalues by ``torch.linalg.eigvalsh`` (about half the cost of
    ``eigh`` with all the vectors), each wanted vector by inverse iteration, (H − μI)x ← x from the
    previous call's vector of the same ``key`` and ``name``, with μ the computed eigenvalue
    shifted by 16·eps·‖H‖ (one LU factorisation per matrix and vector, ``iters`` solves).

    A vector is accepted when its residual is at rounding level, ‖Hx − λx‖ ≤ ``rtol``·max|λ|;
    an element with a vector that is not (or with a non-finite result) gets a full
    ``torch.linalg.eigh``: a *fallback*, counted in ``stats``, never silent
    (:func:`immulib.linear.run` reports them in its ``info`` and warns).

    Chapter: {ref}`ch-performance`.
    """

    def __init__(self, iters: int = 3, rtol: float = 1e-11):
        from ._validate import integer, positive

        self.iters = integer(iters, "iters", 1)
        self.rtol = positive(rtol, "rtol")
        self._v: dict = {}  # (key, name) -> the previous call's vectors (B, D)
        self.stats = dict(calls=0, matrices=0, vectors=0, fallbacks=0)

    def seed(self, key, name, v: torch.Tensor) -> None:
        """Warm-start the vectors ``name`` of ``key`` (B, D)."""
        self._v[(key, name)] = v

    def __call__(self, H: torch.Tensor, key, want: dict):
        """(eigenvalues ascending (B, D), {name: eigenvector (B, D)}) of the symmetric ``H``
        (its upper triangle is read for the eigenvalues, all of it for the vectors: the
        vectors are those of Hᵀ, equal to H up to rounding); ``want``
        maps a name to the index (B,) of its eigenvalue in ascending order."""
        Hs = H  # LAPACK scales a matrix outside its safe range itself
        # LAPACK works on a column-major copy: of the transposed view (the upper triangle,
        # equal to the lower one up to rounding) that copy is a plain memcpy, not a transpose
        lam = torch.linalg.eigvalsh(Hs.mT)
        B, D = lam.shape
        # the per-matrix scalars on the host (numpy; at small D a torch call on a (B,)
        # tensor costs more than the arithmetic): max|λ|, the shifts, the acceptance test
        lam_h = lam.numpy() if lam.device.type == "cpu" else lam.cpu().numpy()
        top = np.abs(lam_h).max(-1)
        out, ok, rows = {}, np.isfinite(lam_h).all(-1), np.arange(B)
        for name, idx in want.items():
            mu = lam_h[rows, idx.cpu().numpy()]
            # Hᵀ − (μ + 16·eps·max|λ|)·I (Hᵀ = H up to rounding): the shift on the diagonal of
            # a column-major copy, factorised in place (no second copy of the batch)
            shifted = Hs.mT.clone()
            shifted.diagonal(dim1=-2, dim2=-1).sub_(
                torch.from_numpy(mu + 16 * _EPS * top).to(H.device)[:, None]
            )
            LU, piv, info = torch.linalg.lu_factor_ex(
                shifted,
                out=(
                    shifted,
                    torch.empty(B, D, dtype=torch.int32, device=H.device),
                    torch.empty(B, dtype=torch.int32, device=H.device),
                ),
            )
            x = self._v.get((key, name))
            if x is None or x.shape != (B, D):
                x = torch.ones(B, D, dtype=H.dtype, device=H.device)
            x = x[..., None]
            for _ in range(self.iters):
                x = torch.linalg.lu_solve(LU, piv, x)
                x = x / torch.linalg.vector_norm(x, dim=-2, keepdim=True)
            # Hx through two columns: the same product kernel at every B, so that whether an
            # element is accepted does not depend on its batch (see linear._matvec)
            Hx = torch.bmm(Hs, x.expand(B, D, 2))[..., :1]
            resid = torch.linalg.vector_norm(
                Hx - torch.from_numpy(mu).to(H.device)[:, None, None] * x, dim=(-2, -1)
            )
            x = x[..., 0]
            resid = resid.numpy() if resid.device.type == "cpu" else resid.cpu().numpy()
            ok &= np.isfinite(resid) & (resid <= self.rtol * top)
            out[name] = x
        self.stats["calls"] += 1
        self.stats["matrices"] += B
        self.stats["vectors"] += B * len(want)
        bad = torch.from_numpy(np.flatnonzero(~ok)).to(H.device)
        if len(bad):  # counted fallbacks: a full eigh of those elements
            self.stats["fallbacks"] += len(bad)
            lam_b, V_b = torch.linalg.eigh(Hs[bad])
            lam = lam.index_copy(0, bad, lam_b)
            for name, idx in want.items():
                out[name] = out[name].index_copy(0, bad, _column(V_b, idx[bad]))
        for name, x in out.items():
            self._v[(key, name)] = x
        return lam, out


class TridiagonalEigensolver:
    """Chosen eigenvalues and one eigenvector of each of a batch of symmetric matrices
    (B × D × D, float64, on the CPU), from one Householder tridiagonalisation each: LAPACK's
    ``sytrd`` (through ``scipy.linalg.lapack``; it reads the lower triangle of the matrix's
    transpose, i.e. its upper triangle), then the eigenvalues asked for, by index, from the
    tridiagonal matrix (bisection, ``stebz``; the run of indices that holds the wanted vector by
    MRRR, ``stemr``), and the wanted eigenvector taken back through the reflectors
    (``ormqr``). Every eigenvalue is computed only when asked for (``sterf``,
    :meth:`immulib.linalg.TridiagonalSpectra.eigenvalues`, e.g. for a recorded step). A call
    costs about one ``eigvalsh``'s tridiagonalisation: no iteration, no warm start, so nothing
    to converge (``stats["fallbacks"]`` counts the elements that LAPACK refuses, e.g. a
    bisection that cannot separate a cluster of eigenvalues equal to rounding, which then get
    a full ``torch.linalg.eigh``). Each matrix is divided by a power of two first (exact), and
    scipy's BLAS runs with torch's thread count. The policy step of
    :func:`immulib.linear.run` reads only a few eigenvalues and one eigenvector of each
    Hessian, so on the CPU this is its default solver from D = 96 on.

    Chapter: {ref}`ch-performance`.
    """

    def __init__(self):
        self.stats = dict(calls=0, matrices=0, vectors=0, fallbacks=0)
        self._plans: dict = {}  # a row of indices -> its runs of consecutive indices
        try:  # scipy's BLAS threads, limited per call (see __call__)
            from threadpoolctl import ThreadpoolController

            self._pool = ThreadpoolController()
        except ImportError:  # pragma: no cover - it comes with scikit-learn
            self._pool = None

    def _one(self, Hb: np.ndarray, row: np.ndarray, j: int):
        """(the eigenvalues of index ``row``, the eigenvector of index ``j``, (d, e, scale) of
        the tridiagonal form) of one matrix, or None where LAPACK refuses it or returns a
        non-finite number. The matrix is divided by a power of two (exact) so that its largest
        entry lies in [0.5, 1), and the eigenvalues are scaled back."""
        from scipy.linalg import lapack

        D = Hb.shape[0]
        top = float(np.abs(Hb).max())
        if not math.isfinite(top) or top == 0.0:
            return None
        scale = math.ldexp(1.0, math.frexp(top)[1])
        # Hᵀ / scale: a column-major copy that sytrd may overwrite (no copy of its own)
        a, lwork = Hb.T / scale, 64 * D
        c, d, e, tau, info = lapack.dsytrd(a, lower=1, lwork=lwork, overwrite_a=1)
        if info != 0 or not (np.isfinite(d).all() and np.isfinite(e).all()):
            return None
        runs, inverse = self._plan(row, j)
        got, vec = [], None
        for lo, hi in runs:
            if lo <= j <= hi:  # MRRR: the run's eigenpairs
                # (stemr overwrites its off-diagonal, one entry longer: a copy)
                m, w, z, info = lapack.dstemr(
                    d, np.append(e, 0.0), 3, 0.0, 0.0, lo + 1, hi + 1
                )
                if info != 0 or m != hi - lo + 1:
                    return None
                zj = z[:, j - lo]
                # x = Q z, Q = H(1)…H(D−1) = diag(1, Q') with Q' stored as a QR
                # factorisation's reflectors in c[1:, :D−1]
                tail, _, info = lapack.dormqr(
                    "L", "N", c[1:, : D - 1], tau, zj[1:, None], lwork
                )
                if info != 0:
                    return None
                vec = np.concatenate([zj[:1], tail[:, 0]])
            else:  # bisection: the run's eigenvalues alone, ascending
                m, w, _, _, info = lapack.dstebz(
                    d, e, 2, 0.0, 0.0, lo + 1, hi + 1, 0.0, "E"
                )
                if info != 0 or m != hi - lo + 1:
                    return None
            got.append(w[:m])
        vals = np.concatenate(got)[inverse] * scale
        if not (np.isfinite(vals).all() and np.isfinite(vec).all()):
            return None
        return vals, vec, (d, e, scale)

    def _plan(self, row, vector: int):
        """(the runs of consecutive indices of ``row``, sorted and without repeats; where each
        of ``row``'s entries lands in their concatenation), computed once per distinct row."""
        key = (tuple(row.tolist()), vector)
        if key not in self._plans:
            idx, inverse = np.unique(row, return_inverse=True)  # ascending
            runs = [
                (int(r[0]), int(r[-1]))
                for r in np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)
            ]
            self._plans[key] = (runs, inverse)
        return self._plans[key]

    def __call__(self, H: torch.Tensor, values, vector) -> TridiagonalSpectra:
        """The eigenvalues of index ``values`` (B × m, ascending order, 0 = the smallest) and
        the eigenvector of index ``vector`` (B,; one of that row of ``values``) of each
        symmetric ``H`` (B × D × D, CPU float64)."""

        if not isinstance(H, torch.Tensor) or H.dtype != torch.float64 or H.ndim != 3:
            raise TypeError("H must be a B × D × D float64 torch tensor")
        if H.device.type != "cpu":
            raise ValueError(
                "TridiagonalEigensolver runs on the CPU; use PartialEigensolver"
            )
        B, D, _ = H.shape
        values = np.asarray(values, dtype=np.int64).reshape(B, -1)
        vector = np.asarray(vector, dtype=np.int64).reshape(B)
        if (
            values.min() < 0
            or values.max() >= D
            or not (vector[:, None] == values).any(1).all()
        ):
            raise ValueError(
                f"values must be indices in 0 … {D - 1} and vector one of each row's values"
            )
        vals = np.empty(values.shape)
        vecs = np.empty((B, D))
        tri, Hn = [], H.detach().numpy()
        # LAPACK in scipy's BLAS with torch's thread count (its own default ignores it)
        with (
            self._pool.limit(limits=torch.get_num_threads(), user_api="blas")
            if self._pool is not None
            else contextlib.nullcontext()
        ):
            for b in range(B):
                one = self._one(Hn[b], values[b], int(vector[b]))
                if one is None:  # counted: a full eigh of this element
                    self.stats["fallbacks"] += 1
                    lam_b, V_b = torch.linalg.eigh(H[b])
                    vals[b] = lam_b.numpy()[values[b]]
                    vecs[b] = V_b[:, int(vector[b])].numpy()
                    tri.append((None, lam_b.numpy(), 1.0))
                else:
                    vals[b], vecs[b] = one[0], one[1]
                    tri.append(one[2])
        self.stats["calls"] += 1
        self.stats["matrices"] += B
        self.stats["vectors"] += B
        return TridiagonalSpectra(torch.from_numpy(vals), torch.from_numpy(vecs), tri)


class TridiagonalSpectra:
    """What :class:`TridiagonalEigensolver` returns: ``values`` (B × m, in the order asked),
    ``vector`` (B × D) and, on request, every eigenvalue.

    Chapter: {ref}`ch-performance`.
    """

    __slots__ = ("values", "vector", "_tri", "_all")

    def __init__(self, values, vector, tri):
        self.values, self.vector, self._tri, self._all = values, vector, tri, None

    def eigenvalues(self) -> torch.Tensor:
        """Every eigenvalue of each matrix, ascending (B × D), from its tridiagonal form."""
        from scipy.linalg import lapack

        if self._all is None:
            out = []
            for d, e, scale in self._tri:
                if d is None:  # a fallback element: e holds its eigenvalues
                    out.append(e)
                    continue
                lam, info = lapack.dsterf(d, e)
                if info != 0:
                    raise np.linalg.LinAlgError(f"dsterf failed (info {info})")
                out.append(lam * scale)
            self._all = torch.from_numpy(np.stack(out))
        return self._all


def _column(V: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Column j[b] of each V[b] (B, D, D) as (B, D)."""
    return torch.gather(V, -1, j[:, None, None].expand(V.shape[0], V.shape[1], 1))[
        ..., 0
    ]


class ExtremeEigensolver:
    """The largest and the smallest eigenpairs of a batch of symmetric positive definite
    matrices (B × D × D, float64), by LOBPCG with warm starts: each call starts from the Ritz
    vectors that the previous call with the same ``key`` returned, with their change over that
    call as the first search direction.

    The large end uses plain LOBPCG (a block of ``n_top + guard`` vectors), the small end LOBPCG
    preconditioned with the exact inverse (a Cholesky factor of the call's matrices; a factor
    of an earlier step preconditions poorly, the spectrum moves by a large fraction of λ_min per
    step). A wanted pair j has converged when its Ritz value is accurate, ‖r_j‖²/gap_j ≤
    ``tol``·λ_j (the Rayleigh-quotient error bound, gap_j the distance to the nearest other Ritz
    value of the block) and, if its vector is wanted, ‖r_j‖/gap_j ≤ ``vtol`` (the bound on the
    sine of its angle to the eigenvector); a residual at rounding level, ‖r_j‖ ≤ 1e-13·λ_max,
    always counts as converged. Elements that have not converged after ``max_iter``
    iterations, or whose Cholesky factorisation fails (not numerically positive definite), get
    a full ``torch.linalg.eigh``: a *fallback*, counted in the instance dict ``stats``, never silent
    (:func:`immulib.linear.run` reports them in its ``info`` and warns).

    Chapter: {ref}`ch-performance`.

    Parameters
    ----------
    n_top
        Largest eigenvalues wanted (≥ 1; a call may ask for fewer).
    guard
        Extra vectors in each block (≥ 1): they speed up convergence of the wanted ones.
    tol, vtol
        Relative accuracy of the wanted eigenvalues and of the wanted eigenvectors (above).
    max_iter
        LOBPCG iterations before an element falls back to ``eigh``.
    """

    def __init__(
        self,
        n_top: int = 2,
        guard: int = 4,
        tol: float = 1e-14,
        vtol: float = 1e-9,
        max_iter: int = 40,
    ):
        from ._validate import integer, positive

        self.n_top = integer(n_top, "n_top", 1)
        self.guard = integer(guard, "guard", 1)
        self.tol, self.vtol = positive(tol, "tol"), positive(vtol, "vtol")
        self.max_iter = integer(max_iter, "max_iter", 1)
        self._X: dict = {}  # key -> (top block, bottom block, their last changes)
        self.stats = dict(
            calls=0, matrices=0, iterations=0, max_iterations=0, fallbacks=0, cholesky=0
        )

    def reset_stats(self) -> None:
        """Zero the counters (the warm starts are kept)."""
        self.stats = {k: 0 for k in self.stats}

    def seed(self, key, lam: torch.Tensor, V: torch.Tensor) -> None:
        """Warm-start ``key`` from a full decomposition (eigenvalues ascending, eigenvectors)."""
        m = self.n_top + self.guard
        if V.shape[-1] < 2 * m:
            raise ValueError(
                f"the matrices are too small ({V.shape[-1]} × {V.shape[-1]}) for blocks of "
                f"{m} vectors at each end: use torch.linalg.eigh"
            )
        self._X[key] = (
            V[..., -m:].clone(),
            V[..., : self.guard + 1].clone(),
            None,
            None,
        )

    def __call__(
        self,
        H: torch.Tensor,
        key="H",
        *,
        top: int | None = None,
        top_vectors: int | None = None,
        bottom: bool = True,
        bottom_vector: bool = True,
    ) -> dict:
        """The extreme eigenpairs of the batch ``H`` (symmetric): a dict with ``top`` (B, top)
        and ``top_vectors`` (B, D, top), ascending, of the ``top`` (default ``n_top``) largest
        eigenvalues, of which the ``top_vectors`` (default all) largest have converged vectors,
        and (``bottom=True``) ``bottom`` (B,), ``bottom_vector`` (B, D, 1), the smallest pair
        (its vector converged if ``bottom_vector``)."""
        if H.ndim != 3 or H.shape[-1] != H.shape[-2]:
            raise ValueError(f"H must be B × D × D, got shape {tuple(H.shape)}")
        top = self.n_top if top is None else top
        top_vectors = top if top_vectors is None else top_vectors
        if not 1 <= top <= self.n_top or not 0 <= top_vectors <= top:
            raise ValueError(
                f"top must be in 1..{self.n_top} and top_vectors in 0..top, "
                f"got {top}, {top_vectors}"
            )
        B, D, _ = H.shape
        m_top, m_bot = self.n_top + self.guard, self.guard + 1
        if D < 2 * m_top:
            raise ValueError(
                f"H is too small ({D} × {D}) for blocks of {m_top} vectors: use eigh"
            )
        self.stats["calls"] += 1
        self.stats["matrices"] += B
        s = H.abs().amax(dim=(-2, -1)).clamp_min(torch.finfo(H.dtype).tiny)
        Hs = H / s[:, None, None]
        Xt, Xb, Pt, Pb = self._X.get(key, (None, None, None, None))
        if Xt is None or Xt.shape[0] != B or Xt.shape[1] != D:
            gen = torch.Generator(device="cpu").manual_seed(0)
            rnd = torch.randn(B, D, m_top + m_bot, generator=gen, dtype=H.dtype)
            rnd = rnd.to(H.device)
            Xt, Xb, Pt, Pb = rnd[..., :m_top], rnd[..., m_top:], None, None
        want_t = (slice(m_top - top, m_top), slice(m_top - top_vectors, m_top))
        lt, Vt, ok, iters = self._lobpcg(Hs, Xt, None, None, want_t, True, Pt)
        if bottom:
            L, info = self._factor(Hs)
            want_b = (slice(0, 1), slice(0, 1 if bottom_vector else 0))
            lb, Vb, ok_b, it_b = self._lobpcg(Hs, Xb, L, lt[:, -1], want_b, False, Pb)
            ok = ok & ok_b & (info == 0)
            iters = max(iters, it_b)
        self.stats["iterations"] += iters
        self.stats["max_iterations"] = max(self.stats["max_iterations"], iters)
        bad = torch.nonzero(~ok).flatten()
        if len(
            bad
        ):  # counted fallbacks: a full eigh of the elements that did not converge
            self.stats["fallbacks"] += len(bad)
            lam, V = torch.linalg.eigh(Hs[bad])
            lt, Vt = lt.clone(), Vt.clone()
            lt[bad], Vt[bad] = lam[:, -m_top:], V[..., -m_top:]
            if bottom:
                lb, Vb = lb.clone(), Vb.clone()
                lb[bad], Vb[bad] = lam[:, :m_bot], V[..., :m_bot]
        # the next call starts from these vectors, with their change since this call's start
        # as LOBPCG's first search direction (the eigenvectors move smoothly along a run)
        dt = Vt - Xt @ (Xt.mT @ Vt)
        db = Vb - Xb @ (Xb.mT @ Vb) if bottom else Pb
        self._X[key] = (Vt, Vb if bottom else Xb, dt, db)
        out = dict(top=lt[:, -top:] * s[:, None], top_vectors=Vt[..., -top:])
        if bottom:
            out.update(bottom=lb[:, 0] * s, bottom_vector=Vb[..., :1])
        return out

    def _factor(self, Hs):
        """A Cholesky factor of Hs, and where it failed (info ≠ 0: not numerically positive
        definite; those elements get the identity and fall back, counted)."""
        L, info = torch.linalg.cholesky_ex(Hs)
        eye = torch.eye(Hs.shape[-1], dtype=Hs.dtype, device=Hs.device)
        L = torch.where((info == 0)[:, None, None], L, eye)
        self.stats["cholesky"] += 1
        return L, info

    def _lobpcg(self, H, X, L, lam_max, want, largest, P0=None):
        """LOBPCG on the batch H from the block X: (Ritz values ascending (B, m), vectors
        (B, D, m), converged (B,), iterations). ``want``: the block columns whose values and
        whose vectors must converge; ``L``: Cholesky factor of the preconditioner H⁻¹;
        ``lam_max``: the scale of the rounding-level residual (default the block's largest).

        The blocks are kept as rows (B, m, D), contiguous, so that every product with H is a
        row-major (m × D)·(D × D) one (H is symmetric): much faster than H·(D × m) on a strided
        Q."""
        m = X.shape[-1]
        Y = _qr(X).mT  # (B, m, D), rows orthonormal
        HY = Y @ H
        theta, U = torch.linalg.eigh(_symm(HY @ Y.mT))
        Y, HY = U.mT @ Y, U.mT @ HY
        P = None if P0 is None else P0.mT.contiguous()
        for it in range(self.max_iter + 1):
            R = HY - theta[..., None] * Y
            ok = self._converged(R, theta, want, lam_max)
            if bool(ok.all()) or it == self.max_iter:
                return theta, Y.mT, ok, it
            W = R
            if L is not None:  # R(LLᵀ)⁻¹ by two triangular solves
                W = torch.linalg.solve_triangular(L.mT, W, upper=True, left=False)
                W = torch.linalg.solve_triangular(L, W, upper=False, left=False)
            S = torch.cat([Y, W] if P is None else [Y, W, P], dim=1)
            S = _qr(S.mT).mT.contiguous()
            HS = S @ H
            th, Us = torch.linalg.eigh(_symm(HS @ S.mT))
            pick = slice(th.shape[-1] - m, None) if largest else slice(0, m)
            Ut = Us[..., pick].mT
            Yn = Ut @ S
            P = Yn - (Yn @ Y.mT) @ Y
            Y, HY, theta = Yn, Ut @ HS, th[..., pick]
        raise AssertionError("unreachable")

    def _converged(self, R, theta, want, lam_max):
        """(B,) whether every wanted value (and wanted vector) of the block has converged."""
        vals, vecs = want
        r = R.norm(dim=-1)  # (B, m)
        big = theta[:, -1] if lam_max is None else lam_max
        d = theta.diff(dim=-1).abs()  # gaps between neighbouring Ritz values
        inf = torch.full_like(d[:, :1], math.inf)
        gap = torch.minimum(torch.cat([inf, d], -1), torch.cat([d, inf], -1))
        gap = gap.clamp_min(torch.finfo(theta.dtype).tiny)
        floor = r <= 1e-13 * big[:, None]
        ok_val = (r**2 / gap <= self.tol * theta.abs()) | floor
        ok_vec = (r / gap <= self.vtol) | floor
        return ok_val[:, vals].all(-1) & ok_vec[:, vecs].all(-1)


def _symm(A):
    return (A + A.mT) / 2
