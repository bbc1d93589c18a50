"""Immunizing a linear feature extractor: one engine for Algorithm 1, its ablations and baselines.

The defender trains θ (D × D) and a pre-training head ω so that the ℓ2 probe on the harmful
inputs, H_H(θ) = θᵀK_Hθ, is ill-conditioned while the probe on D_P, H_P(θ) = θᵀK_Pθ, is not
(Eq. (11)). Everything the full-batch methods need is a function of Gram matrices, so the
engine works on a :class:`Problem` of sufficient statistics, **batched** along a leading
dimension B: :func:`immunize` runs one problem (B = 1), the MNIST sweep
(:mod:`immulib.pairs`) runs 90 digit pairs through the same :func:`run`.

Methods (what is optimised):

* ``"ours"``: Algorithm 1, L(D_P) + λ_P R_well(H_P) + λ_H R_ill(H_H), with the K⁻¹-preconditioned
  regularizer steps computed as θ(I − 2η_P G_well − 2η_H G_ill) (Theorems 4.2-4.3; K⁻¹ is
  never formed);
* ``"r_well_only"`` / ``"r_ill_only"``: the same with λ_H = 0 / λ_P = 0 (the ablations);
* ``"constrained"`` (this book's protective variant): maximise log κ(H_H) while holding
  κ(H_P) ≤ κ(K_P) (Definition 3.1 (b)): K_P⁺-preconditioned steps on log κ(H_H) −
  β·max(0, log κ(H_P) − log κ(K_P))², normalised (‖Δθ‖_F = η‖θ‖_F) with η decaying linearly to
  0, the best feasible iterate kept, then R_well steps within the safe bound of
  :func:`immulib.regularizers.safe_step_r_well` until the constraint holds;
* ``"opt_kappa"``: Adam on L(D_P) + μ(log κ(H_P) − log κ(H_H)) (closed-form gradients);
* ``"imma"``: Adam on L(D_P) − μ·L_H(w_T), w_T the attacker's probe after ``inner_steps``
  unrolled, differentiable gradient steps (needs the harmful targets).

Step policies of ``"ours"``/``"r_well_only"``/``"r_ill_only"`` (named objects in :data:`POLICIES`):

* ``"paper"``: Algorithm 1 exactly as printed: fixed η, λ_P, λ_H, full batch;
* ``"adaptive"``: each regularizer step sized by its own Theorem 4.3 bound at θ_t (R_ill's also
  by a trust region), never as a fraction of the other's;
* ``"released"``: the authors' released code: Adam, mini-batch Gram matrices, a ridge in the
  preconditioner, applied on the output side (B = 1 only; it needs the rows of X).

Derived in the chapter {ref}`ch-house-prices`; the sweep in {ref}`ch-mnist-pairs`; the protective
optimum the constrained method aims at in {ref}`ch-optimal`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import regularizers as reg
from ._validate import (
    as_float64,
    choice,
    integer,
    nonneg,
    number,
    positive,
    threads,
)
from ._validate import progress as _progress
from .linalg import (
    CONVENTIONS,
    SHIFT,
    ExtremeEigensolver,
    PartialEigensolver,
    TridiagonalEigensolver,
    _column,
    gram,
)
from .results import ImmunizationResult

__all__ = [
    "AUTHORS_HOUSE_PRICES",
    "CODE_LIFT",
    "METHODS",
    "POLICIES",
    "Policy",
    "Problem",
    "algorithm1_direction",
    "immunize",
    "precondition",
    "UnresolvedKappaWarning",
    "run",
    "starts",
]

METHODS: tuple[str, ...] = (
    "ours",
    "r_well_only",
    "r_ill_only",
    "constrained",
    "opt_kappa",
    "imma",
)
#: the methods whose steps follow a :class:`Policy`
POLICY_METHODS: tuple[str, ...] = ("ours", "r_well_only", "r_ill_only")

#: The authors' released house-price configuration (paper_notes §4.2): Adam, lr 5e-3, mini-batches
#: of 64 (drop_last), λ_P = 100, λ_H = 10⁷, ridge 1 in the preconditioner, applied on the output
#: side, nn.Linear's default initialisation, ω ~ N(0, I). The code trains 10 epochs; the paper 100.
AUTHORS_HOUSE_PRICES: dict[str, object] = dict(
    policy="released",
    eta=5e-3,
    batch_size=64,
    lam_P=100.0,
    lam_H=1e7,
    ridge=1.0,
    precond_side="output",
    init="linear_default",
    epochs=10,
)

EPS = float(torch.finfo(torch.float64).eps)
#: the smallest D at which ``solver=None`` picks the tridiagonal (CPU) or partial (GPU)
#: eigensolver for the policy methods. Below it the engine keeps ``eigh``, although since both
#: Hessians share one solver call the partial solver is faster there too (House Prices, D = 71:
#: 3.8 against 4.4 eigh-equivalents a step, measured once on 2 CPU cores): Ours (adaptive)
#: amplifies rounding on House Prices (chapter 05), so another default solver would move every
#: House Prices result
PARTIAL_MIN_D = 96


@dataclass(frozen=True)
class Policy:
    """How a step of ``"ours"`` and its ablations is sized (see the module docstring).

    Chapter: {ref}`ch-house-prices`.
    """

    name: str
    description: str
    optimizer: str  # "gd" or "adam"
    full_batch: bool
    default_eta: float


POLICIES: dict[str, Policy] = {
    "paper": Policy(
        "paper",
        "Algorithm 1 as printed: fixed η, λ_P, λ_H; full batch; K⁻¹ "
        "preconditioning (λ's by default balance the two preconditioned gradient norms "
        "at θ_0, λ_P·‖2θG_well‖ = λ_H·‖2θG_ill‖ = 1/σ-scale, see immunize)",
        "gd",
        True,
        5e-3,
    ),
    "adaptive": Policy(
        "adaptive",
        "each regularizer step sized by its own bound at θ_t: R_well ρ·the safe bound "
        "(safe_step_r_well), R_ill min(ρ·its derived bound (max_step_r_ill), trust region δ)",
        "gd",
        True,
        1e-3,
    ),
    "released": Policy(
        "released",
        "the released code: Adam, mini-batch Grams, ridge, output-side "
        "preconditioner, through the dummy layer",
        "adam",
        False,
        5e-3,
    ),
}


# ---------------------------------------------------------------------------------------------
# the problem: sufficient statistics, batched


@dataclass(frozen=True)
class Problem:
    """B linear immunization problems as Gram matrices (float64, one device).

    ``KP``, ``KH``: (B, D, D) Grams of D_P's and D_H's inputs (R_well and R_ill act on θᵀKθ).
    The supervised loss L = (1/Ns)‖X_sθω − y_s‖² = (uᵀKs u − 2bsᵀu + cs)/Ns, u = θω, is given by
    ``Ks`` (B, D, D), ``bs`` = X_sᵀy_s (B, D), ``cs`` = y_sᵀy_s (B,), ``Ns`` (B,); by default the rows
    of D_P. ``bH``, ``cH``, ``NH``: the same for the harmful targets (IMMA only; may be None).

    Chapter: {ref}`ch-house-prices`.
    """

    KP: torch.Tensor
    KH: torch.Tensor
    Ks: torch.Tensor
    bs: torch.Tensor
    cs: torch.Tensor
    Ns: torch.Tensor
    bH: torch.Tensor | None = None
    cH: torch.Tensor | None = None
    NH: torch.Tensor | None = None

    @property
    def B(self) -> int:
        return self.KP.shape[0]

    @property
    def D(self) -> int:
        return self.KP.shape[-1]

    def repeat(self, n: int) -> Problem:
        """The same B problems repeated ``n`` times along the batch (e.g. one per seed)."""
        n = integer(n, "n", 1)
        rep = lambda t: None if t is None else t.repeat(n, *([1] * (t.ndim - 1)))  # noqa: E731
        fields = {f: rep(getattr(self, f)) for f in self.__dataclass_fields__}
        if self.Ks is self.KP:  # keep "the supervised rows are D_P" visible to run()
            fields["Ks"] = fields["KP"]
        return Problem(**fields)

    @classmethod
    def from_data(cls, XP, yP, XH, yH=None) -> Problem:
        """One problem (B = 1) from the rows of D_P (inputs and targets) and D_H."""
        XP, XH = (
            as_float64(XP, "XP", ndim=2).detach(),
            as_float64(XH, "XH", ndim=2).detach(),
        )
        yP = as_float64(yP, "yP", ndim=1).detach()
        if len(yP) != len(XP):
            raise ValueError(
                f"yP must have {len(XP)} entries (one per row of XP), got {len(yP)}"
            )
        if XH.shape[1] != XP.shape[1]:
            raise ValueError(
                f"XH must have {XP.shape[1]} columns like XP, got {XH.shape[1]}"
            )
        KP, KH = gram(XP), gram(XH)
        one = lambda v: torch.tensor([float(v)], dtype=torch.float64)  # noqa: E731
        bH = cH = NH = None
        if yH is not None:
            yH = as_float64(yH, "yH", ndim=1).detach()
            if len(yH) != len(XH):
                raise ValueError(
                    f"yH must have {len(XH)} entries (one per row of XH), got {len(yH)}"
                )
            bH, cH, NH = (XH.T @ yH)[None], one(yH @ yH), one(len(yH))
        KP = KP[None]
        return cls(
            KP, KH[None], KP, (XP.T @ yP)[None], one(yP @ yP), one(len(yP)), bH, cH, NH
        )


def _hessians(theta, prob):
    """θᵀK_Pθ and θᵀK_Hθ stacked, (2, B, D, D), so that what is done to both is one call
    (each as (θᵀK)θ, bit for bit the products of separate calls)."""
    raw = theta.new_empty((2, *theta.shape))
    thT = theta.mT
    torch.bmm(torch.bmm(thT, prob.KP), theta, out=raw[0])
    torch.bmm(torch.bmm(thT, prob.KH), theta, out=raw[1])
    return raw


def _split(lam, V):
    """A stacked decomposition (2B rows: H_P's, then H_H's) as (λ_P, V_P, λ_H, V_H)."""
    B = lam.shape[0] // 2
    return lam[:B], V[:B], lam[B:], V[B:]


def _sym(A):
    return (A + A.mT) / 2


def _absmax(A):
    """max |A| over each matrix (keepdim), NaN if it holds one: from its largest and its
    smallest entry, two reads of A and no |A| written (the same number, bit for bit)."""
    dims = (-2, -1)
    return torch.maximum(
        A.amax(dim=dims, keepdim=True), -A.amin(dim=dims, keepdim=True)
    )


def _eig(H, Hs=None, absmax=None):
    """Eigenvalues (ascending) and eigenvectors of a batch of symmetric matrices, scaled for
    stability (κ and the eigenvectors are scale-free; the eigenvalues are scaled back).
    ``Hs``: _sym(H), ``absmax``: max |H| per matrix (keepdim), when the caller has them."""
    if absmax is None:
        absmax = _absmax(H)
    s = absmax.clamp_min(torch.finfo(H.dtype).tiny)
    lam, V = torch.linalg.eigh((_sym(H) if Hs is None else Hs) / s)
    return lam * s[..., 0], V


def _eigvals(H):
    """The eigenvalues alone (ascending), scaled as in :func:`_eig` (cheaper than eigh with
    vectors: for the last recorded step, K_P and K_s)."""
    s = H.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(H.dtype).tiny)
    return torch.linalg.eigvalsh(_sym(H) / s) * s[..., 0]


def _rank(lam):
    """Numerical rank per batch element (numpy's matrix_rank rule on the eigenvalues)."""
    tol = lam[..., -1:].abs() * lam.shape[-1] * EPS
    return (lam > tol).sum(-1)


class UnresolvedKappaWarning(RuntimeWarning):
    """The constrained method's κ(H_H) divides by an eigenvalue below float64's resolution
    (``info["unresolved_kappa_H"]`` of :func:`run`). Chapter: {ref}`ch-mnist-pairs`."""


def _pick(lam, idx):
    return torch.gather(lam, -1, idx[..., None])[..., 0]


def _kappa(lam, k, convention: str):
    """κ of each batch element from its eigenvalues: pinv (σ_max/σ_k, k the rank) or shifted."""
    D = lam.shape[-1]
    if convention == "pinv":
        return lam[..., -1] / _pick(lam, D - k)
    shifted = lam + SHIFT
    big = torch.where(shifted > SHIFT, shifted, torch.full_like(shifted, math.inf))
    return shifted[..., -1] / big.amin(-1)


def _outer(v):
    """v vᵀ of each row of v (B, D)."""
    return v[..., :, None] * v[..., None, :]


class _Full:
    """What the engine reads of a batch of Hessians, from a full decomposition (λ ascending, V).
    ``H``: the (exactly symmetric) matrices decomposed, when the caller has them."""

    __slots__ = ("lam", "V", "H")

    def __init__(self, lam, V, H=None):
        self.lam, self.V, self.H = lam, V, H

    @property
    def top(self):
        return self.lam[:, -1]

    @property
    def second(self):
        return self.lam[:, -2]

    def at(self, k):
        """σ_k, the k-th largest eigenvalue (k: (B,) ranks)."""
        return _pick(self.lam, self.lam.shape[-1] - k)

    def outer_top(self):
        v = self.V[..., -1:]
        return v @ v.mT

    def outer_at(self, k):
        return _outer(self.vec_at(k))

    def vec_top(self):
        """v₁ (B, D)."""
        return self.V[..., -1]

    def vec_at(self, k, index=None):
        """v_k (B, D), the eigenvector of σ_k (``index``: the gather index of column D − k,
        (B, D, 1), when the caller keeps one)."""
        if index is None:
            return _column(self.V, self.lam.shape[-1] - k)
        return torch.gather(self.V, -1, index)[..., 0]

    def rebuilt(self):
        """H itself when the caller has it (saves a D³ product), else V diag(λ) Vᵀ."""
        if self.H is not None:
            return self.H
        return (self.V * self.lam[:, None, :]) @ self.V.mT

    def fro2(self):
        return (self.lam**2).sum(-1)

    def rank(self):
        return _rank(self.lam)

    def kappa(self, k, convention):
        return _kappa(self.lam, k, convention)


class _Partial(_Full):
    """Every eigenvalue and the eigenvectors of σ₁ (``"top"``) and/or σ_k (``"at"``), from
    :class:`immulib.linalg.PartialEigensolver`."""

    __slots__ = ("vecs",)

    def __init__(self, lam, vecs, H):
        super().__init__(lam, None, H)
        self.vecs = vecs

    def vec_top(self):
        return self.vecs["top"]

    def vec_at(self, k, index=None):
        return self.vecs["at"]

    def outer_top(self):
        return _outer(self.vecs["top"])

    def outer_at(self, k):
        return _outer(self.vecs["at"])


class _Extreme:
    """The same from an extreme-eigenpair solver (:class:`immulib.linalg.ExtremeEigensolver`):
    the two largest and the smallest eigenpair of full-rank Hessians (k = D), and H itself."""

    __slots__ = ("top", "second", "low", "v_top", "v_low", "H")

    def __init__(self, out, H):
        self.top, self.low = out["top"][:, -1], out["bottom"]
        self.second = out["top"][:, -2] if out["top"].shape[-1] > 1 else None
        self.v_top, self.v_low = out["top_vectors"][..., -1:], out["bottom_vector"]
        self.H = H

    def at(self, k):
        return self.low  # k = D (checked by run)

    def outer_top(self):
        return self.v_top @ self.v_top.mT

    def outer_at(self, k):
        return self.v_low @ self.v_low.mT

    def vec_top(self):
        return self.v_top[..., 0]

    def vec_at(self, k, index=None):
        return self.v_low[..., 0]

    def rebuilt(self):
        return self.H

    def fro2(self):
        return (self.H * self.H).sum((-2, -1))

    def rank(self):
        D = self.H.shape[-1]
        return torch.full_like(self.low, D, dtype=torch.long)

    def kappa(self, k, convention):
        if convention == "pinv":
            return self.top / self.low
        inf = torch.full_like(self.low, math.inf)
        return (self.top + SHIFT) / torch.where(self.low > 0, self.low + SHIFT, inf)


class _Tri:
    """The same from :class:`immulib.linalg.TridiagonalEigensolver`: σ₁, σ₂ (``None`` when not
    asked for), σ_k at the run's k, the one eigenvector the policy step reads (v₁ of H_P, v_k of
    H_H), H itself, and every eigenvalue only when a recorded step asks (``rows``: this
    Hessian's rows of the solver's batch)."""

    __slots__ = ("top", "second", "low", "k", "v", "H", "_spectra", "_rows")

    def __init__(self, top, second, low, k, v, H, spectra, rows):
        self.top, self.second, self.low, self.k, self.v = top, second, low, k, v
        self.H, self._spectra, self._rows = H, spectra, rows

    @property
    def lam(self):
        return self._spectra.eigenvalues()[self._rows]

    def at(self, k):
        return self.low  # at the run's k, the only one the step reads

    def outer_top(self):
        return _outer(self.v)

    def outer_at(self, k):
        return _outer(self.v)

    def vec_top(self):
        return self.v

    def vec_at(self, k, index=None):
        return self.v

    def rebuilt(self):
        return self.H

    def fro2(self):
        return torch.linalg.vector_norm(self.H, dim=(-2, -1)) ** 2

    def _fast_rows(self, k=None, convention="pinv"):
        """Per row, whether σ_low is the smallest eigenvalue (the run's k is D; and the k
        asked for, if any, too) and above the rank rule's tolerance (and, shifted, not
        swallowed by the shift: λ + SHIFT > SHIFT): then the rank is D and κ comes from σ₁
        and σ_low. Decided row by row, so that a row's history does not depend on its
        batch-mates; every eigenvalue is computed only when some row needs it."""
        D = self.H.shape[-1]
        ok = (self.k == D) & (self.low > self.top.abs() * D * EPS)
        if k is not None:
            ok &= k == D
        if convention != "pinv":
            ok &= self.low + SHIFT > SHIFT
        return ok

    def rank(self):
        ok, full = self._fast_rows(), torch.full_like(self.k, self.H.shape[-1])
        return full if bool(ok.all()) else torch.where(ok, full, _rank(self.lam))

    def kappa(self, k, convention):
        ok = self._fast_rows(k, convention)
        if convention == "pinv":
            fast = self.top / self.low
        else:
            fast = (self.top + SHIFT) / (self.low + SHIFT)
        if bool(ok.all()):
            return fast
        return torch.where(ok, fast, _kappa(self.lam, k, convention))


def _host(x):
    """A float64 tensor's values as a numpy array on the host (no copy on the CPU)."""
    return x.numpy() if x.device.type == "cpu" else x.cpu().numpy()


def _to(a, like):
    """A numpy array as a tensor on ``like``'s device (no copy on the CPU)."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t if like.device.type == "cpu" else t.to(like.device)


def _ends(s, k):
    """What the step sizes read of a spectrum, on the host (numpy, float64): (every eigenvalue
    ascending (B, D), or None from the extreme solver; σ₁; σ₂ or None; σ_k), k the ranks
    (numpy). The step sizes are per-problem scalars: computing them on the host costs ~1 µs an
    operation where a torch call on a (B,) tensor costs several, and at D ≤ 100 those calls,
    not the arithmetic, were what a step cost."""
    if isinstance(s, (_Extreme, _Tri)):
        second = None if s.second is None else _host(s.second)
        return None, _host(s.top), second, _host(s.low)
    lam = _host(s.lam)
    return lam, lam[:, -1], lam[:, -2], lam[np.arange(len(lam)), lam.shape[-1] - k]


def _dev_max(lam, top, k, sk):
    """max_i |σ_i/k − [i = k]σ_k| (the numerator of ‖∇R_ill‖₂), on the host; from the extreme
    solver (no interior eigenvalues, k = D) max(σ₁/k, |σ_k − σ_k/k|)."""
    if lam is None:
        return np.maximum(top / k, np.abs(sk - sk / k))
    d = -lam / k[:, None]
    d[np.arange(len(d)), lam.shape[-1] - k] += sk
    return np.abs(d).max(-1)


def _g_well(s, H=None):
    """∇R_well(H) = σ₁v₁v₁ᵀ − H/p from H's spectrum (batched; H symmetric)."""
    p = s.H.shape[-1] if isinstance(s, _Extreme) else s.lam.shape[-1]
    rebuilt = H is None and s.H is None  # V diag(λ) Vᵀ is symmetric only up to rounding
    G = s.top[:, None, None] * s.outer_top() - (s.rebuilt() if H is None else H) / p
    return _sym(G) if rebuilt else G


def _g_ill(s, k, H=None):
    """(∇R_ill(H), g) with ∇R_ill = (σ_k v_k v_kᵀ − H/k)/g², g = ‖H‖_F²/(2k) − σ_k²/2 (Eq. (13))."""
    sk = s.at(k)
    g = s.fro2() / (2 * k) - sk**2 / 2
    rebuilt = H is None and s.H is None
    H = s.rebuilt() if H is None else H
    G = (sk[:, None, None] * s.outer_at(k) - H / k[:, None, None]) / (g**2)[
        :, None, None
    ]
    return (_sym(G) if rebuilt else G), g, sk


def _bound_well(s1, s2, smin, p):
    """The safe R_well step bound (immulib.regularizers.safe_step_r_well, which replaces the
    transcribed Theorem 4.3 (1) bound) from σ₁, σ₂ and σ_k of each problem, on the host
    (numpy arrays)."""
    with np.errstate(all="ignore"):  # as torch: inf/NaN flow on to the divergence check
        s2, smin = np.maximum(s2, 0.0), np.maximum(smin, 0.0)
        first = (1 - np.sqrt(smin / s1)) / (2 * s1 * (1 - 1 / p))
        s2c = np.maximum(s2, 1e-300)
        second = p * (np.sqrt(s1 / s2c) - 1) / (2 * s2c)
        np.putmask(second, ~(s2 > 0), math.inf)  # no second eigenvalue: no second bound
        out = np.minimum(first, second)
        np.putmask(
            out, s1 - smin <= reg.UNIQUE_RTOL * s1, 0.0
        )  # a flat spectrum: no step
        return out


def _grad_log_kappa(theta, K, s, k):
    """∇_θ log κ(θᵀKθ) = 2Kθ(v₁v₁ᵀ/σ₁ − v_kv_kᵀ/σ_k) (σ_k: the k-th largest eigenvalue) as
    its two rank-one terms, L Rᵀ with L = 2Kθ[v₁/σ₁, −v_k/σ_k] and R = [v₁, v_k] (each (B, D,
    2)): the caller adds such factors side by side and forms one D × D matrix from them, so a
    gradient costs O(D²) instead of two D × D products."""
    R = torch.stack([s.vec_top(), s.vec_at(k)], -1)
    w = torch.stack([1 / s.top, -1 / s.at(k)], -1)
    return 2 * torch.bmm(K, torch.bmm(theta, R * w[:, None, :])), R


def _matvec(A, x):
    """A x of each batch element (A (B, m, n), x (B, n)) -> (B, m), as one two-column product
    per element (x and a stride-0 copy of it). A one-column product takes a matrix-vector
    kernel at B = 1, and a lone product of a contiguous pair may split its sums over threads,
    with a rounding that differs from the batched kernel's: a problem's result would then
    depend on how many problems run beside it (and the methods that amplify rounding, chapter
    {ref}`ch-house-prices`, end elsewhere). This form gives the same numbers at every B and
    thread count on the CPU, and from D ≈ 20 the batched one-column product's, so batched
    results did not change."""
    return torch.bmm(A, x[..., None].expand(*x.shape, 2))[..., 0]


def _sup(prob: Problem, theta, omega):
    """(g_u, ∇_ωL, u = θω, K_s u) of the supervised loss, batched: ∇_θL = g_u ωᵀ (rank one,
    formed only by the methods that need it as a matrix); L itself is :func:`_loss` of the last
    two, computed only where it is recorded."""
    u = _matvec(theta, omega)
    Ku = _matvec(prob.Ks, u)
    gu = 2 * (Ku - prob.bs) / prob.Ns[:, None]
    return gu, _matvec(theta.mT, gu), u, Ku


def _loss(prob: Problem, u, Ku):
    """The supervised loss L = (uᵀK_su − 2b_sᵀu + c_s)/N_s from u = θω and K_s u."""
    return ((u * Ku).sum(-1) - 2 * (prob.bs * u).sum(-1) + prob.cs) / prob.Ns


# ---------------------------------------------------------------------------------------------
# the engine


@dataclass
class _Adam:
    """``torch.optim.Adam``'s update (default betas and ε, no weight decay) as a function of a
    plain tensor, so that the batched engine can apply it to θ of shape (B, D, D) without
    leaf parameters; tested against ``torch.optim.Adam`` step for step."""

    eta: float
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    t: int = 0
    m: torch.Tensor | None = None
    v: torch.Tensor | None = None

    def step(self, x, g):
        if self.m is None:
            self.m, self.v = torch.zeros_like(x), torch.zeros_like(x)
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        mh, vh = self.m / (1 - self.b1**self.t), self.v / (1 - self.b2**self.t)
        return x - self.eta * mh / (vh.sqrt() + self.eps)


def _log_kappa_t(H, k):
    """log κ of a batch of PSD matrices, differentiable (IMMA's autograd path only)."""
    lam = torch.linalg.eigvalsh(_sym(H))
    return torch.log(lam[:, -1]) - torch.log(
        _pick(lam, lam.shape[-1] - k).clamp_min(1e-300)
    )


def run(
    prob: Problem,
    method: str = "ours",
    *,
    policy: str = "adaptive",
    steps: int = 400,
    eta: float | None = None,
    lam_P=None,
    lam_H=None,
    rho: float = 0.9,
    delta: float = 0.01,
    mu: float = 1.0,
    beta: float = 3.0,
    inner_steps: int = 10,
    theta_init=None,
    omega_init=None,
    record_every: int = 10,
    conventions: tuple[str, ...] = ("pinv",),
    solver: Callable
    | str
    | ExtremeEigensolver
    | PartialEigensolver
    | TridiagonalEigensolver
    | None = None,
    progress: bool | None = None,
    desc: str | None = None,
):
    """Run ``method`` on the B problems of ``prob`` for ``steps`` full-batch steps.

    Returns ``(theta (B, D, D), omega (B, D), history, info)``: ``history`` a DataFrame with one
    row per problem and recorded step (``problem``, ``step``, ``kappa_P``, ``kappa_H`` per
    convention, ``loss_P``), ``info`` a dict (``lam_P``, ``lam_H``: the weights used, per problem;
    ``restoration_steps`` of the constrained method and ``unresolved_kappa_H``: per problem,
    whether its κ(H_H) divides by an eigenvalue below float64's resolution, with a warning;
    ``solver``: the partial, tridiagonal or extreme solver's counters and ``name``).
    Each Hessian is decomposed once per step (both in one batched call, so that a step pays
    the per-call cost once; the same numbers, bit for bit, as two calls), and that
    decomposition serves every term, bound and history entry (θ_0's also the weights and
    ranks; K_P is decomposed once per run).
    ``solver``: ``"partial"`` / a :class:`immulib.linalg.PartialEigensolver` (every eigenvalue by
    ``eigvalsh``, and only the eigenvectors the terms read by warm-started inverse iteration:
    v₁ of H_P and v_k of H_H for the policy methods, both ends of each for the others),
    ``"tridiagonal"`` / a :class:`immulib.linalg.TridiagonalEigensolver` (CPU, policy methods
    only: one Householder reduction of each Hessian, from which the few eigenvalues and the one
    eigenvector a policy step reads; every eigenvalue only on a recorded step),
    ``"eigh"`` (the batched ``torch.linalg.eigh``), a callable ``H -> (eigenvalues ascending,
    eigenvectors)`` in its place, or ``"extreme"`` / an
    :class:`immulib.linalg.ExtremeEigensolver`: only the eigenpairs the terms read (σ₁, v₁, σ₂,
    σ_min of H_P; σ₁, σ_min, v_min of H_H), by warm-started LOBPCG; it needs full-rank
    Hessians. None (the default) is, for ``"ours"`` and its ablations when
    D ≥ :data:`PARTIAL_MIN_D`, ``"tridiagonal"`` on the CPU and ``"partial"`` on a GPU, else
    ``"eigh"`` (for the other methods always).
    The solvers' fallbacks to ``eigh`` are counted in ``info["solver"]`` and warned about.
    On the CPU a problem's result does not depend on the batch it runs in: alone or beside
    others it gets the same θ, ω and history, bit for bit, with every built-in solver but the
    extreme one (whose iterations run until every element of the batch has converged).
    Knobs: see :func:`immunize`. The ``"released"`` policy needs the rows of X: use
    :func:`immunize`.

    Chapter: {ref}`ch-house-prices`.
    """
    choice(method, "method", METHODS)
    choice(policy, "policy", POLICIES)
    if method in POLICY_METHODS and policy == "released":
        raise ValueError(
            'policy="released" needs the rows of X (mini-batches): call immunize()'
        )
    steps, record_every, inner_steps = (
        integer(steps, "steps", 1),
        integer(record_every, "record_every", 1),
        integer(inner_steps, "inner_steps", 1),
    )
    rho = number(rho, "rho", minimum=0.0, strict=True)
    if rho >= 1:
        raise ValueError(
            f"rho must be < 1 (a fraction of a Theorem 4.3 bound), got {rho}"
        )
    delta, mu, beta = positive(delta, "delta"), positive(mu, "mu"), nonneg(beta, "beta")
    for c in conventions:
        choice(c, "conventions", CONVENTIONS)
    if method == "imma" and prob.bH is None:
        raise ValueError('method="imma" needs the harmful targets yH')
    if (
        solver is None
    ):  # the policy step reads two eigenvectors (the others four): below
        # PARTIAL_MIN_D eigh stays the default, so that House Prices results do not move
        solver = (
            ("tridiagonal" if prob.KP.device.type == "cpu" else "partial")
            if method in POLICY_METHODS and prob.D >= PARTIAL_MIN_D
            else "eigh"
        )
    custom = callable(solver) and not isinstance(
        solver, (str, ExtremeEigensolver, PartialEigensolver, TridiagonalEigensolver)
    )
    eig, eigvals, extreme = _solvers(solver)
    partial = extreme if isinstance(extreme, PartialEigensolver) else None
    tri = extreme if isinstance(extreme, TridiagonalEigensolver) else None
    if partial is not None or tri is not None:
        extreme = None
    if tri is not None and method not in POLICY_METHODS:
        raise ValueError(
            f'solver="tridiagonal" gives the one eigenvector of each Hessian that the policy '
            f'methods read; method="{method}" reads the eigenvectors of both ends of each '
            'spectrum (use "partial" or "eigh")'
        )
    if tri is not None and prob.KP.device.type != "cpu":
        raise ValueError('solver="tridiagonal" runs on the CPU; use "partial" on a GPU')
    B, D, dev = prob.B, prob.D, prob.KP.device
    theta = (
        torch.eye(D, dtype=torch.float64, device=dev).expand(B, D, D).clone()
        if theta_init is None
        else theta_init.to(dev, torch.float64).expand(B, D, D).clone()
    )
    omega = (
        torch.zeros(B, D, dtype=torch.float64, device=dev)
        if omega_init is None
        else omega_init.to(dev, torch.float64).expand(B, D).clone()
    )
    pol = POLICIES[policy]
    if eta is None:
        eta = (
            pol.default_eta
            if method in POLICY_METHODS
            else (0.1 if method == "constrained" else 1e-2)
        )
    eta = positive(eta, "eta")
    # θ_0's Hessians, decomposed once: for the ranks, the weights and the loop's step 0
    raw0 = _hessians(theta, prob)
    if custom:
        (lamP0, VP0), (lamH0, VH0) = eig(raw0[0]), eig(raw0[1])
    else:
        lamP0, VP0, lamH0, VH0 = _split(*eig(raw0.flatten(0, 1)))
    kP, kH = _rank(lamP0), _rank(lamH0)
    if bool((kH < 2).any()) or bool((kP < 2).any()):
        raise ValueError(
            "H_P(θ_0) and H_H(θ_0) need rank >= 2 for κ and the regularizers"
        )
    if extreme is not None:
        if not (bool((kP == D).all()) and bool((kH == D).all())):
            raise ValueError(
                "the extreme eigensolver needs full-rank Hessians (σ_k is then the smallest "
                "eigenvalue; of a singular one it lies inside the spectrum): use solver=None"
            )
        extreme.seed("P", lamP0, VP0)
        extreme.seed("H", lamH0, VH0)
        # what each Hessian's terms read: R_well σ₁, v₁, σ₂ and σ_min (its bound); R_ill σ_min,
        # v_min and σ₁ (its norm); the log κ gradients both ends' vectors
        if method in POLICY_METHODS:
            need_P = dict(top=2, top_vectors=1, bottom_vector=False)
            need_H = dict(top=1, top_vectors=0, bottom_vector=True)
        else:
            need_P = need_H = dict(top=1, top_vectors=1, bottom_vector=True)
    if partial is not None:
        # the vectors each Hessian's terms read, both Hessians in one call (stacked: P's B
        # rows, then H's), warm-started from θ_0's: of the policy methods v₁ of H_P and v_k of
        # H_H (one vector each), of the others both ends of each
        top = torch.full((B,), D - 1, dtype=torch.long, device=dev)
        if method in POLICY_METHODS:
            want = {"v": torch.cat([top, D - kH])}
            partial.seed(
                "PH", "v", torch.cat([_column(VP0, top), _column(VH0, D - kH)])
            )
        else:
            want = {"top": torch.cat([top, top]), "at": torch.cat([D - kP, D - kH])}
            V0 = torch.cat([VP0, VH0])
            for name, idx in want.items():
                partial.seed("PH", name, _column(V0, idx))
    if tri is not None:
        # per row of the stacked Hessians (P's B rows, then H's), the eigenvalues the step
        # reads by ascending index (of H_P σ₁, σ₂, σ_k; of H_H σ₁, σ_k, repeated to the same
        # width) and the one eigenvector (v₁ of H_P, v_k of H_H)
        kP_h, kH_h, top_h = _host(kP), _host(kH), np.full(B, D - 1)
        tri_values = np.concatenate(
            [
                np.stack([top_h, top_h - 1, D - kP_h], 1),
                np.stack([top_h, D - kH_h, D - kH_h], 1),
            ]
        )
        tri_vector = np.concatenate([top_h, D - kH_h])
    # K_P decomposed once: κ(K_P) = κ(H_P(I)) (Definition 3.1 (b)) and, constrained, K_P⁺
    if method == "constrained":
        lamK, VK = eig(prob.KP)
    else:
        lamK = eigvals(prob.KP)
    kappa_budget = _kappa(lamK, _rank(lamK), "pinv")

    # the weights of the regularizers
    on_P = 0.0 if method == "r_ill_only" else 1.0
    on_H = 0.0 if method == "r_well_only" else 1.0
    if (
        method in POLICY_METHODS
        and policy == "paper"
        and (lam_P is None or lam_H is None)
    ):
        # balance the two preconditioned gradient norms at θ_0, each scaled so that η·λ·‖2θG‖ is
        # η times the relative size of θ: λ_P = ‖θ‖/‖2θG_well‖, λ_H = ‖θ‖/‖2θG_ill‖
        nth = theta.flatten(1).norm(dim=1)
        GP0 = _g_well(_Full(lamP0, VP0))
        GH0 = _g_ill(_Full(lamH0, VH0), kH)[0]
        lP = (
            nth / (2 * theta @ GP0).flatten(1).norm(dim=1)
            if lam_P is None
            else torch.full((B,), float(lam_P))
        )
        lH = (
            nth / (2 * theta @ GH0).flatten(1).norm(dim=1)
            if lam_H is None
            else torch.full((B,), float(lam_H))
        )
    else:
        lP = torch.full(
            (B,), 1.0 if lam_P is None else nonneg(lam_P, "lam_P"), dtype=torch.float64
        )
        lH = torch.full(
            (B,), 1.0 if lam_H is None else nonneg(lam_H, "lam_H"), dtype=torch.float64
        )
    lP, lH = (lP * on_P).to(dev, torch.float64), (lH * on_H).to(dev, torch.float64)
    if method not in POLICY_METHODS:
        lP = lH = torch.full((B,), math.nan, dtype=torch.float64, device=dev)

    adam = _Adam(eta) if method in ("opt_kappa", "imma") else None
    if (
        method == "constrained"
    ):  # K_P⁺ (pseudo-inverse: the authors' setup has a singular K_P)
        inv = torch.where(
            lamK > lamK[:, -1:] * D * EPS, 1 / lamK, torch.zeros_like(lamK)
        )
        KP_pinv = _sym((VK * inv[:, None, :]) @ VK.mT)
        best_kH = torch.full((B,), -math.inf, dtype=torch.float64, device=dev)
        best_theta, best_omega = theta.clone(), omega.clone()
    LK = lamK[:, -1] if prob.Ks is prob.KP else eigvals(prob.Ks)[:, -1]
    # the supervised rows are D_P ∪ D_H (the sweep's a-vs-b head): λ_max(θᵀK_sθ) is then at
    # most λ_max(H_P) + λ_max(H_H), and the head's cap needs no decomposition while that bound
    # already keeps it above η
    ks_is_sum = (
        prob.Ks is not prob.KP
        and prob.Ks.shape == prob.KP.shape
        and bool(torch.equal(prob.Ks, prob.KP + prob.KH))
    )
    rows = []

    def record(t, sP, sH, loss):
        cols = {"loss_P": loss.tolist()}
        rP, rH = sP.rank(), sH.rank()
        for c in conventions:
            suffix = "" if c == conventions[0] else f"_{c}"
            cols["kappa_P" + suffix] = sP.kappa(rP, c).tolist()
            cols["kappa_H" + suffix] = sH.kappa(rH, c).tolist()
        for b in range(B):
            rows.append(dict(problem=b, step=t, **{k: v[b] for k, v in cols.items()}))

    knobs = dict(
        eta=eta, rho=rho, delta=delta,
        use_P=bool((lP > 0).any()), use_H=bool((lH > 0).any()),
    )  # fmt: skip
    # the per-problem constants the step sizes read, on the host (see _ends)
    consts = _StepConsts(
        lP=_host(lP), lH=_host(lH), kP=_host(kP), kH=_host(kH), Ns=_host(prob.Ns),
        LK=_host(LK), kH_torch=kH, index_H=(D - kH)[:, None, None].expand(B, D, 1),
    )  # fmt: skip
    bar = tqdm(
        total=steps, disable=not _progress(progress), desc=desc or method, leave=False
    )
    omega_t = omega
    for t in range(steps + 1):
        raw = raw0 if t == 0 else _hessians(theta, prob)  # (2, B, D, D): H_P, H_H
        rawP, rawH = raw[0], raw[1]
        gu, g_omega, u, Ku = _sup(prob, theta, omega)
        # the largest |entry| of each Hessian: the scale of its decomposition, and (the max
        # propagates NaN, |±inf| = inf) with the loss's gradient the finiteness check
        absmax = _absmax(raw)
        if not np.isfinite(_host(torch.cat([absmax.flatten(), gu.flatten()]))).all():
            raise FloatingPointError(
                f"{method} diverged at step {t} (non-finite spectrum or gradient): lower eta={eta:g}"
                + (
                    f" or the weights lam_P/lam_H={lam_P}/{lam_H}"
                    if method in POLICY_METHODS
                    else f", mu={mu:g}"
                )
            )
        # symmetric up to rounding; eigh reads one triangle, and the policy step needs no more
        Hs = raw if method in POLICY_METHODS and t > 0 else _sym(raw)
        HP, HH = Hs[0], Hs[1]
        if t == 0:  # the decompositions of θ_0 made above
            sP, sH = _Full(lamP0, VP0, HP), _Full(lamH0, VH0, HH)
        elif t == steps and method != "constrained" and extreme is None:
            # the last iterate is only recorded: its eigenvalues suffice
            if custom:
                lam = eigvals(raw[0]), eigvals(raw[1])
            else:
                lam = eigvals(raw.flatten(0, 1)).split(B)
            sP, sH = _Full(lam[0], None, HP), _Full(lam[1], None, HH)
        elif extreme is not None:
            sP = _Extreme(extreme(HP, "P", **need_P), HP)
            sH = _Extreme(extreme(HH, "H", **need_H), HH)
        elif tri is not None:  # both Hessians in one call
            out = tri(Hs.flatten(0, 1), tri_values, tri_vector)
            val, vec = out.values, out.vector
            sP = _Tri(
                val[:B, 0], val[:B, 1], val[:B, 2], kP, vec[:B], HP, out, slice(0, B)
            )
            sH = _Tri(
                val[B:, 0], None, val[B:, 1], kH, vec[B:], HH, out, slice(B, 2 * B)
            )
        elif partial is not None:  # both Hessians in one call
            lam, vecs = partial(Hs.flatten(0, 1), "PH", want)
            if method in POLICY_METHODS:
                vP, vH = {"top": vecs["v"][:B]}, {"at": vecs["v"][B:]}
            else:
                vP = {name: v[:B] for name, v in vecs.items()}
                vH = {name: v[B:] for name, v in vecs.items()}
            sP, sH = _Partial(lam[:B], vP, HP), _Partial(lam[B:], vH, HH)
        elif custom:
            sP, sH = _Full(*eig(rawP), HP), _Full(*eig(rawH), HH)
        else:  # both Hessians in one batched eigh
            lamP, VP, lamH, VH = _split(
                *_eig(raw.flatten(0, 1), Hs.flatten(0, 1), absmax.flatten(0, 1))
            )
            sP, sH = _Full(lamP, VP, HP), _Full(lamH, VH, HH)
        if method == "constrained":  # keep the feasible iterate with the largest κ(H_H)
            kH_t = sH.kappa(kH, "pinv")
            feasible = sP.kappa(kP, "pinv") <= kappa_budget * (1 + 1e-9)
            better = feasible & (kH_t > best_kH)
            best_kH = torch.where(better, kH_t, best_kH)
            best_theta = torch.where(better[:, None, None], theta, best_theta)
            best_omega = torch.where(better[:, None], omega, best_omega)
        if t % record_every == 0 or t == steps:
            record(t, sP, sH, _loss(prob, u, Ku))
        if t == steps:
            break
        # the head: a gradient step on L, capped by the inverse Lipschitz constant Ns/(2σ_max(θᵀKsθ))
        endsP, endsH = _ends(sP, consts.kP), _ends(sH, consts.kH)
        eta_w = _head_rate(
            prob, theta, endsP[1], endsH[1], eta, consts.Ns,
            capped=method in POLICY_METHODS, ks_is_sum=ks_is_sum, extreme=extreme,
        )  # fmt: skip
        omega_t = omega - _to(eta_w[:, None], omega) * g_omega
        if method in POLICY_METHODS:
            with np.errstate(
                all="ignore"
            ):  # as torch: inf/NaN go on to the finite check
                theta = _policy_step(
                    pol, theta, omega, gu, (sP, endsP), (sH, endsH), consts, knobs
                )
        elif method == "imma":
            theta = adam.step(
                theta, _imma_grad(prob, theta, omega, mu, inner_steps, kH)
            )
        else:
            (LH, RH), (LP, RP) = (
                _grad_log_kappa(theta, prob.KH, sH, kH),
                _grad_log_kappa(theta, prob.KP, sP, kP),
            )
            if method == "opt_kappa":  # g_u ωᵀ + μ(∇log κ(H_P) − ∇log κ(H_H)): rank 5
                L = torch.cat([gu[..., None], mu * LP, -mu * LH], -1)
                R = torch.cat([omega[..., None], RP, RH], -1)
                theta = adam.step(theta, torch.bmm(L, R.mT))
            else:  # constrained: ascend log κ(H_H), penalise log κ(H_P) above log κ(K_P);
                # K_P⁻¹-preconditioned (as Algorithm 1 preconditions R_well) and normalised:
                # ‖Δθ‖_F = η‖θ‖_F, so η is the relative change of θ per step
                viol = (
                    torch.log(sP.kappa(kP, "pinv")) - torch.log(kappa_budget)
                ).clamp_min(0)
                # K_P⁺(−∇log κ(H_H) + 2β·viol·∇log κ(H_P)): rank 4, K_P⁺ times its left factors
                L = torch.cat([-LH, 2 * beta * viol[:, None, None] * LP], -1)
                P = torch.bmm(torch.bmm(KP_pinv, L), torch.cat([RH, RP], -1).mT)
                scale = theta.flatten(1).norm(dim=1) / P.flatten(1).norm(
                    dim=1
                ).clamp_min(1e-300)
                # the step decays linearly to 0, and the best feasible iterate is kept (below)
                theta = theta - eta * (1 - t / steps) * scale[:, None, None] * P
        omega = omega_t
        bar.update(1)
    bar.close()
    info = dict(lam_P=lP.tolist(), lam_H=lH.tolist(), restoration_steps=[0] * B)
    if method == "constrained":
        # the last iterate if it is feasible after restoration and better, else the best feasible one
        theta, info["restoration_steps"] = _restore(
            theta, prob, kP, kappa_budget, rho, eig
        )
        last_kH = _kappa(eig(theta.mT @ prob.KH @ theta)[0], kH, "pinv")
        use_last = last_kH >= best_kH
        theta = torch.where(use_last[:, None, None], theta, best_theta)
        omega = torch.where(use_last[:, None], omega, best_omega)
        lamP, lamH = (
            eig(theta.mT @ prob.KP @ theta)[0],
            eig(theta.mT @ prob.KH @ theta)[0],
        )
        # the κ(H_H) it maximised divides by the k-th eigenvalue, k = rank(K_H) at θ_0: on a
        # rank-deficient problem it can push that one below what float64 resolves (the rank
        # rule's max|λ|·D·eps), where a reported κ no longer counts it
        unresolved = _rank(lamH) < kH
        info["unresolved_kappa_H"] = unresolved.tolist()
        if bool(unresolved.any()):
            warnings.warn(
                f"the constrained method's κ(H_H) divides by an eigenvalue below float64's "
                f"resolution (max|λ|·D·eps) on {int(unresolved.sum())} of {B} problem(s): the "
                "κ it maximised is not measurable, and a κ that counts only resolved "
                "eigenvalues (immulib.linalg.condition_number) can be far smaller; see "
                "info['unresolved_kappa_H'] and chapter 06",
                UnresolvedKappaWarning,
                stacklevel=2,
            )
        rows = [r for r in rows if r["step"] != steps]
        record(
            steps,
            _Full(lamP, None),
            _Full(lamH, None),
            _loss(prob, *_sup(prob, theta, omega)[2:]),
        )
    used = next((s for s in (extreme, partial, tri) if s is not None), None)
    if used is not None:
        info["solver"] = dict(used.stats, name=type(used).__name__)
        if used.stats["fallbacks"]:
            warnings.warn(
                f"the {type(used).__name__} fell back to a full eigh for "
                f"{used.stats['fallbacks']} matrices (of {2 * B * steps}); see info['solver']",
                RuntimeWarning,
                stacklevel=2,
            )
    return theta, omega, pd.DataFrame(rows), info


def _solvers(solver):
    """(the full decomposition used at θ_0 and, with solver "eigh" or a callable, in the loop;
    the eigenvalues alone; the loop's extreme-eigenpair or partial solver, or None)."""
    if solver == "eigh":
        return _eig, _eigvals, None
    if solver is None or solver == "partial":
        return _eig, _eigvals, PartialEigensolver()
    if solver == "extreme":
        return _eig, _eigvals, ExtremeEigensolver()
    if solver == "tridiagonal":
        return _eig, _eigvals, TridiagonalEigensolver()
    if isinstance(
        solver, (ExtremeEigensolver, PartialEigensolver, TridiagonalEigensolver)
    ):
        return _eig, _eigvals, solver
    if callable(solver) and not isinstance(solver, str):
        return solver, lambda H: solver(H)[0], None
    raise TypeError(
        'solver must be None, "partial", "tridiagonal", "eigh", "extreme", an '
        "immulib.linalg.PartialEigensolver, TridiagonalEigensolver or ExtremeEigensolver, "
        f"or a callable H -> (eigenvalues ascending, eigenvectors), got {solver!r}"
    )


def _head_rate(prob, theta, top_P, top_H, eta, Ns, *, capped, ks_is_sum, extreme):
    """The head's step size per problem (host): its cap N_s/(2σ_max(θᵀK_sθ)), the inverse
    Lipschitz constant of ∇_ωL, and for the policy methods (``capped``) min(η, cap).
    σ_max(θᵀK_sθ) is σ₁(H_P) when K_s = K_P; when the supervised rows are D_P ∪ D_H (the sweep's
    a-vs-b head) it is at most σ₁(H_P) + σ₁(H_H), and no decomposition is needed while that
    bound keeps the cap above η; else it is computed."""
    if prob.Ks is prob.KP:
        cap = Ns / (2 * top_P)
    elif capped and ks_is_sum and (Ns / (2 * (top_P + top_H) * (1 + 1e-6)) > eta).all():
        return np.full_like(Ns, eta)
    else:
        HS = _sym(theta.mT @ prob.Ks @ theta)
        top = (
            torch.linalg.eigvalsh(HS)[:, -1]
            if extreme is None
            else extreme(HS, "S", top=1, top_vectors=0, bottom=False)["top"][:, -1]
        )
        cap = Ns / (2 * _host(top))
    return np.minimum(eta, cap) if capped else cap


@dataclass(frozen=True)
class _StepConsts:
    """The per-problem constants the policy step reads: the weights λ_P, λ_H, the ranks k_P,
    k_H, the sample counts N_s and σ_max(K_s) as numpy arrays (the host arithmetic), and k_H
    with its gather index as torch tensors on θ's device (the pick of v_k)."""

    lP: np.ndarray
    lH: np.ndarray
    kP: np.ndarray
    kH: np.ndarray
    Ns: np.ndarray
    LK: np.ndarray
    kH_torch: torch.Tensor
    index_H: torch.Tensor


def _policy_step(pol, theta, omega, gu, spec_P, spec_H, consts, knobs):
    """One full-batch step of ``"ours"``/``"r_well_only"``/``"r_ill_only"`` under ``pol``.

    θ ← θ − η_t g_u ωᵀ − θM with M = 2η_P G_well + 2η_H G_ill, never formed: with
    G_well = σ₁v₁v₁ᵀ − H_P/p and G_ill = (σ_k v_kv_kᵀ − H_H/k)/g²,
    θM = θ(a_P H_P + a_H H_H) + c_P (θv₁)v₁ᵀ + c_H (θv_k)v_kᵀ, so a step is one D × D product
    and one rank-3 update (a_P = −2η_P/p, c_P = 2η_Pσ₁, a_H = −2η_H/(k g²), c_H = 2η_Hσ_k/g²).
    The step sizes and these coefficients are per-problem scalars, computed on the host from
    the spectra's ends (:func:`_ends`); the matrices stay on θ's device."""
    (sP, (_, p1, p2, pk)), (sH, (lamH, h1, _, hk)) = spec_P, spec_H
    c, eta, rho, delta = consts, knobs["eta"], knobs["rho"], knobs["delta"]
    lP, lH, kH = c.lP, c.lH, c.kH
    B, D = theta.shape[0], theta.shape[-1]
    H_weights, H_list, vecs, vec_weights = [], [], [], []  # θM = θΣ a H + Σ (θv) (c v)ᵀ
    if knobs["use_P"]:
        etaP = (
            eta * lP if pol.name == "paper" else lP * rho * _bound_well(p1, p2, pk, D)
        )
        H_weights.append(-2 * etaP / D)
        H_list.append(sP.H)
        vecs.append(sP.vec_top())
        vec_weights.append(2 * etaP * p1)
    if knobs["use_H"]:
        g = _host(sH.fro2()) / (2 * kH) - hk**2 / 2
        if pol.name == "paper":
            etaH = eta * lH
        else:  # its own bound (Theorem 4.3 (2)) and a trust region ‖2η_H G_ill‖₂ ≤ δ
            bound = g**2 / (2 * hk * (1 - 1 / kH))
            gnorm = _dev_max(lamH, h1, kH, hk) / g**2
            etaH = lH * np.minimum(rho * bound, delta / (2 * gnorm))
        np.putmask(etaH, ~(lH > 0), 0.0)  # R_ill off for that problem
        etaH = etaH / g**2
        H_weights.append(-2 * etaH / kH)
        H_list.append(sH.H)
        vecs.append(sH.vec_at(c.kH_torch, c.index_H))
        vec_weights.append(2 * etaH * hk)
    # the supervised θ-step, capped by the inverse Lipschitz constant 2‖ω‖²σ_max(K_s)/N of ∇_θL
    w2 = _host((omega * omega).sum(-1))
    vec_weights.append(np.minimum(eta, c.Ns / (2 * c.LK * w2 + 1e-300)))
    a = _to(np.array(H_weights).T.reshape(B, -1, 1, 1), theta) if H_weights else None
    # (B, D, m + 1): the vectors of the low-rank update
    V = torch.stack([*vecs, omega], -1)
    W = V * _to(np.array(vec_weights).T[:, None, :], theta)
    # θ times the vectors (ω too: two columns at least, see _matvec), ω's column then g_u
    U = torch.bmm(theta, V)
    U[..., -1] = gu
    if a is None:
        return torch.baddbmm(theta, U, W.mT, alpha=-1)
    C = H_list[0] * a[:, 0]
    if len(H_list) > 1:
        C.addcmul_(H_list[1], a[:, 1])
    # θ − θC, then the low-rank update in place (the step is a new tensor, θ is not touched)
    return torch.baddbmm(theta, theta, C, alpha=-1).baddbmm_(U, W.mT, alpha=-1)


def _imma_grad(prob, theta, omega, mu, inner_steps, kH):
    """∇_θ of L(D_P) − μ·L_H(w_T) by autograd through the unrolled attacker (batched)."""
    with torch.enable_grad():
        th = theta.detach().requires_grad_(True)
        u = _matvec(th, omega)
        Ku = _matvec(prob.Ks, u)
        lossP = ((u * Ku).sum(-1) - 2 * (prob.bs * u).sum(-1) + prob.cs) / prob.Ns
        A = th.mT @ prob.KH @ th
        A = 2 * _sym(A) / prob.NH[:, None, None]
        bw = 2 * _matvec(th.mT, prob.bH) / prob.NH[:, None]
        alpha = 1 / torch.linalg.eigvalsh(A)[:, -1]
        w = torch.zeros_like(omega)
        for _ in range(inner_steps):
            w = w - alpha[:, None] * (_matvec(A, w) - bw)
        lossH = ((w * _matvec(A, w)).sum(-1) / 2 - (bw * w).sum(-1)) + prob.cH / prob.NH
        (g,) = torch.autograd.grad((lossP - mu * lossH).sum(), th)
    return g


def _restore(theta, prob, kP, budget, rho, eig, max_steps: int = 10_000):
    """R_well steps within the safe bound (which replaces the transcribed Theorem 4.3 (1)
    bound) until κ(H_P) ≤ the budget, per problem."""
    counts = [0] * theta.shape[0]
    for _ in range(max_steps):
        lam, V = eig(theta.mT @ prob.KP @ theta)
        over = _kappa(lam, kP, "pinv") > budget * (1 + 1e-9)
        if not bool(over.any()):
            break
        _, s1, s2, sk = _ends(_Full(lam, V), _host(kP))
        etaP = torch.where(
            over,
            rho * _to(_bound_well(s1, s2, sk, lam.shape[-1]), lam),
            torch.zeros_like(lam[:, 0]),
        )
        theta = theta - 2 * theta @ (etaP[:, None, None] * _g_well(_Full(lam, V)))
        for b in torch.nonzero(over).flatten().tolist():
            counts[b] += 1
    return theta, counts


# ---------------------------------------------------------------------------------------------
# the released code's variant: the "dummy layer", Adam, mini-batches (B = 1)


class _Precondition(torch.autograd.Function):
    @staticmethod
    def forward(ctx, theta, K, side):
        ctx.save_for_backward(K)
        ctx.side = side
        return theta.clone()

    @staticmethod
    def backward(ctx, grad):
        (K,) = ctx.saved_tensors
        if ctx.side == "theta":
            return torch.linalg.solve(K, grad), None, None
        return torch.linalg.solve(K, grad.T).T, None, None


def precondition(
    theta: torch.Tensor, K, *, ridge: float = 0.0, side: str = "theta"
) -> torch.Tensor:
    """The "dummy layer" of paper §4.4 / App. C.3: returns θ; its backward multiplies by (K + ridge·I)⁻¹.

    ``side="theta"`` (the paper): the gradient G w.r.t. θ becomes (K + rI)⁻¹G, so R(θ̃ᵀKθ̃) with
    θ̃ = precondition(θ, K) back-propagates K⁻¹∇_θR = 2θ∇_HR. ``side="output"`` (the released code,
    which left-multiplies ∇_W with W = θᵀ): the gradient becomes G(K + rI)⁻¹. A singular K + rI
    (ridge 0 on a rank-deficient mini-batch) raises a ValueError instead of a wrong direction.
    Chapter: {ref}`ch-house-prices`.
    """
    if not isinstance(theta, torch.Tensor):
        raise TypeError(f"theta must be a torch.Tensor, got {type(theta).__name__}")
    choice(side, "side", ("theta", "output"))
    ridge = nonneg(ridge, "ridge")
    K = as_float64(K, "K", ndim=2).detach()
    if (
        K.shape[0] != K.shape[1]
        or K.shape[0] != theta.shape[0 if side == "theta" else 1]
    ):
        raise ValueError(
            f"K must be square and match theta's {side} side, got {tuple(K.shape)}"
        )
    K = K + ridge * torch.eye(K.shape[0], dtype=K.dtype)
    lam = torch.linalg.eigvalsh(_sym(K))
    if not bool(lam[0] > lam[-1] * K.shape[0] * EPS):
        raise ValueError(
            f"the preconditioner K + ridge·I is singular (ridge={ridge:g}, rank "
            f"{int(_rank(lam[None])[0])} of {K.shape[0]}): inverting it would give a wrong direction; "
            "use ridge > 0 (the released code uses 1) or full batches"
        )
    return _Precondition.apply(theta, K, side)


#: what the released code's ``condition_number`` adds to a Gram matrix's diagonal before its
#: eigenvalues (and the threshold above which it keeps them)
CODE_LIFT = 1e-6


def _code_regularizer(S, which: str):
    """R_well (``which="well"``) or R_ill as the released code's ``reg_loss`` computes them
    (chapter "The paper and its released code", item 13): p = k = the dimension of S, from the
    eigenvalues of S + 10⁻⁶I, σ_max their largest and σ_min the smallest above 10⁻⁶ (on a
    singular S, the lifted null space: 10⁻⁶ plus rounding), differentiated by autograd."""
    D = S.shape[-1]
    eye = torch.eye(D, dtype=S.dtype, device=S.device)
    lam = torch.linalg.eigvalsh(S + CODE_LIFT * eye)
    fro2 = (S * S).sum()
    if which == "well":
        return lam[-1] ** 2 / 2 - fro2 / (2 * D)
    return 1 / (fro2 / (2 * D) - lam[lam > CODE_LIFT].min() ** 2 / 2)


def _released_objective(
    XP, yP, XH, theta, omega, lam_P, lam_H, ridge, side, regularizers="paper"
):
    KP, KH = gram(XP), gram(XH)
    loss = ((XP @ theta @ omega - yP) ** 2).mean()
    code = regularizers == "code"
    if lam_P:
        S = _th(precondition(theta, KP, ridge=ridge, side=side), KP)
        loss = loss + lam_P * (_code_regularizer(S, "well") if code else reg.r_well(S))
    if lam_H:
        S = _th(precondition(theta, KH, ridge=ridge, side=side), KH)
        loss = loss + lam_H * (_code_regularizer(S, "ill") if code else reg.r_ill(S))
    return loss


def _th(theta, K):
    return _sym(theta.T @ K @ theta)


def algorithm1_direction(
    XP,
    yP,
    XH,
    theta,
    omega,
    lam_P: float,
    lam_H: float,
    *,
    ridge: float = 0.0,
    side: str = "theta",
) -> torch.Tensor:
    """Line 6 of Algorithm 1 without η, by one backward pass through the dummy layer:
    ∇_θL + λ_P K_P⁻¹∇_θR_well(H_P) + λ_H K_H⁻¹∇_θR_ill(H_H) (``ridge``/``side``: the released variant).
    With ridge 0 and side "theta" it equals ∇_θL + 2θ(λ_P G_well + λ_H G_ill) (tested).
    Chapter: {ref}`ch-house-prices`."""
    theta = as_float64(theta, "theta", ndim=2).detach().requires_grad_(True)
    loss = _released_objective(
        as_float64(XP, "XP", ndim=2),
        as_float64(yP, "yP", ndim=1),
        as_float64(XH, "XH", ndim=2),
        theta,
        as_float64(omega, "omega", ndim=1),
        nonneg(lam_P, "lam_P"),
        nonneg(lam_H, "lam_H"),
        nonneg(ridge, "ridge"),
        side,
    )
    (grad,) = torch.autograd.grad(loss, theta)
    return grad


def _batches(n, batch_size, gen):
    perm = torch.randperm(n, generator=gen)
    return [
        perm[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)
    ]  # drop_last


def _run_released(
    XP,
    yP,
    XH,
    theta,
    omega,
    *,
    eta,
    lam_P,
    lam_H,
    batch_size,
    ridge,
    side,
    steps,
    gen,
    record,
    record_every,
    bar,
    regularizers="paper",
):
    theta = theta.clone().requires_grad_(True)
    omega = omega.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta, omega], lr=eta)
    n = min(len(XP), len(XH))
    t = 0
    while t < steps:
        for idx in _batches(n, batch_size, gen) if batch_size else [slice(None)]:
            if t >= steps:
                break
            opt.zero_grad()
            obj = _released_objective(
                XP[idx], yP[idx], XH[idx], theta, omega, lam_P, lam_H, ridge, side,
                regularizers,
            )  # fmt: skip
            if not bool(torch.isfinite(obj)):
                raise FloatingPointError(
                    f"released policy diverged at step {t}: lower eta={eta:g} "
                    f"or lam_P/lam_H={lam_P:g}/{lam_H:g}"
                )
            obj.backward()
            opt.step()
            t += 1
            bar.update(1)
            if t % record_every == 0 or t == steps:
                record(t, theta.detach(), omega.detach())
    return theta.detach(), omega.detach()


def starts(D: int, seeds, init: str = "identity") -> tuple[torch.Tensor, torch.Tensor]:
    """(θ_0 (B, D, D), ω_0 (B, D)) for the given seeds, drawn exactly as :func:`immunize` draws
    them, so a batched :func:`run` over seeds equals one :func:`immunize` call per seed.

    Chapter: {ref}`ch-house-prices`.
    """
    choice(init, "init", ("identity", "linear_default"))
    thetas, omegas = [], []
    for seed in seeds:
        gen = torch.Generator().manual_seed(integer(seed, "seed", 0))
        if init == "identity":
            thetas.append(torch.eye(D, dtype=torch.float64))
        else:
            thetas.append(
                (torch.rand(D, D, generator=gen, dtype=torch.float64) * 2 - 1)
                / math.sqrt(D)
            )
        omegas.append(
            torch.randn(D, generator=gen, dtype=torch.float64)
            / (math.sqrt(D) if init == "identity" else 1.0)
        )
    return torch.stack(thetas), torch.stack(omegas)


# ---------------------------------------------------------------------------------------------
# the entry point


def immunize(
    XP,
    yP,
    XH,
    *,
    method: str = "ours",
    policy: str = "adaptive",
    yH=None,
    steps: int | None = None,
    epochs: int | None = None,
    eta: float | None = None,
    lam_P: float | None = None,
    lam_H: float | None = None,
    rho: float = 0.9,
    delta: float = 0.01,
    mu: float = 1.0,
    beta: float = 3.0,
    inner_steps: int = 10,
    batch_size: int | None = None,
    ridge: float = 0.0,
    precond_side: str = "theta",
    regularizers: str = "paper",
    init: str = "identity",
    theta_init=None,
    convention: str = "pinv",
    record_every: int = 10,
    seed: int = 0,
    num_threads: int | None = 1,
    progress: bool | None = None,
) -> ImmunizationResult:
    """Immunize a linear feature extractor θ on (X_P, y_P) against the harmful inputs X_H.

    Chapter: {ref}`ch-house-prices`.

    Parameters
    ----------
    XP, yP, XH
        D_P's inputs (N_P × D) and targets (N_P), D_H's inputs (N_H × D). Float64 inside.
    method
        One of :data:`METHODS` (module docstring). ``"imma"`` needs ``yH``.
    policy
        Step policy of ``"ours"``, ``"r_well_only"``, ``"r_ill_only"``: ``"adaptive"`` (default),
        ``"paper"`` or ``"released"`` (:data:`POLICIES`). Ignored by the other methods, which all
        run Adam with step ``eta`` on closed-form (or, for IMMA, autograd) gradients.
    steps, epochs
        Number of updates (default 400), or, for the released policy, epochs over mini-batches.
    eta
        The step size η: Algorithm 1's learning rate (policies "paper": 0.005, the paper's;
        "adaptive": 0.001, the supervised step only; "released": Adam's 0.005), or Adam's step for
        ``"constrained"``, ``"opt_kappa"``, ``"imma"`` (default 0.01).
    lam_P, lam_H
        Regularizer weights. "paper": λ's of Algorithm 1 (default: balanced so that each
        preconditioned gradient at θ_0 has the norm of θ_0, the paper's "balancing the gradient
        norms"); "adaptive": multipliers of the bound-sized steps (default 1); "released": the
        released λ_P = 100, λ_H = 10⁷.
    rho, delta
        "adaptive": the fraction ρ of each Theorem 4.3 bound, and the trust region
        ‖2η_H G_ill‖₂ ≤ δ of the R_ill step (θ changes by at most that relative amount per step).
    mu, beta
        ``"imma"``/``"opt_kappa"``: weight μ of the baseline's term; ``"constrained"``: weight β of
        the penalty on log κ(H_P) above log κ(K_P).
    inner_steps
        ``"imma"``: unrolled attacker steps (probe from w = 0, step 1/λ_max of its Hessian).
    batch_size, ridge, precond_side, regularizers
        The released policy: mini-batch size (drop_last), ridge in the dummy-layer
        preconditioner, ``"theta"`` (the paper's side) or ``"output"`` (the code's), and
        ``regularizers``: ``"paper"`` (R_well and R_ill as the paper defines them, k = rank and
        σ_k the smallest nonzero eigenvalue; :mod:`immulib.regularizers`) or ``"code"`` (as the
        released ``reg_loss`` computes them: k = p = D on the eigenvalues of H̃ + 10⁻⁶I, σ_min
        the smallest above 10⁻⁶, which on a singular mini-batch Gram is the lifted null space;
        chapter "The paper and its released code", item 13).
    init, theta_init
        θ_0: ``"identity"`` or ``"linear_default"`` (nn.Linear's U(±1/√D), the released code),
        or an explicit ``theta_init``. ω_0 ~ N(0, I/D) (identity) or N(0, I) (linear_default).
    convention
        κ convention of the history (:func:`immulib.linalg.condition_number`).
    record_every
        Record κ every this many steps (and at the last step), from decompositions already made.
    seed
        Seeds θ_0 (``"linear_default"``), ω_0 and the mini-batch order; reruns are identical.
    num_threads, progress
        torch threads during the loop (restored afterwards); a tqdm bar (None: unless TQDM_DISABLE).

    Returns
    -------
    ImmunizationResult
        ``theta`` (D × D), ``omega``, ``history`` (step, kappa_P, kappa_H, loss_P), the weights
        used, seconds and settings. Warns when θ did not move (e.g. huge weights that
        saturate every step bound).
    """
    choice(method, "method", METHODS)
    choice(policy, "policy", POLICIES)
    choice(precond_side, "precond_side", ("theta", "output"))
    choice(regularizers, "regularizers", ("paper", "code"))
    choice(init, "init", ("identity", "linear_default"))
    choice(convention, "convention", CONVENTIONS)
    seed = integer(seed, "seed", 0)
    record_every = integer(record_every, "record_every", 1)
    if steps is not None and epochs is not None:
        raise ValueError("give steps or epochs, not both")
    released = method in POLICY_METHODS and policy == "released"
    if not released:
        for name, v, default in (
            ("epochs", epochs, None),
            ("batch_size", batch_size, None),
            ("ridge", ridge, 0.0),
            ("precond_side", precond_side, "theta"),
            ("regularizers", regularizers, "paper"),
        ):
            if v != default:
                raise ValueError(
                    f'{name} applies only to policy="released" (full-batch methods have no '
                    f"{name}), got {v!r}"
                )
    prob = Problem.from_data(XP, yP, XH, yH if method == "imma" else None)
    if method == "imma" and yH is None:
        raise ValueError('method="imma" needs the harmful targets yH')
    XPt, XHt = (
        as_float64(XP, "XP", ndim=2).detach(),
        as_float64(XH, "XH", ndim=2).detach(),
    )
    yPt = as_float64(yP, "yP", ndim=1).detach()
    D = prob.D
    th0, om0 = starts(D, [seed], init)
    theta, omega = th0[0], om0[0]
    gen = torch.Generator().manual_seed(
        seed + 1
    )  # the mini-batch order of the released policy
    if theta_init is not None:
        theta = as_float64(theta_init, "theta_init", ndim=2).detach().clone()
        if theta.shape != (D, D):
            raise ValueError(f"theta_init must be {D} × {D}, got {tuple(theta.shape)}")
    start = time.perf_counter()
    with threads(num_threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", reg.NonUniqueSingularValueWarning)
        if released:
            eta_ = positive(
                POLICIES["released"].default_eta if eta is None else eta, "eta"
            )
            lP = 100.0 if lam_P is None else nonneg(lam_P, "lam_P")
            lH = 1e7 if lam_H is None else nonneg(lam_H, "lam_H")
            lP, lH = (
                (0.0 if method == "r_ill_only" else lP),
                (0.0 if method == "r_well_only" else lH),
            )
            if batch_size is not None:
                batch_size = integer(
                    batch_size, "batch_size", 1, min(len(XPt), len(XHt))
                )
            n_batches = (min(len(XPt), len(XHt)) // batch_size) if batch_size else 1
            total = (
                integer(epochs, "epochs", 1) * n_batches
                if epochs is not None
                else integer(steps, "steps", 1)
                if steps is not None
                else 10 * n_batches
            )
            rows = []

            def rec(t, th, om):
                from .linalg import condition_number as cn

                rows.append(
                    dict(
                        step=t,
                        kappa_P=cn(_th(th, gram(XPt)), convention=convention),
                        kappa_H=cn(_th(th, gram(XHt)), convention=convention),
                        loss_P=float(((XPt @ th @ om - yPt) ** 2).mean()),
                    )
                )

            bar = tqdm(
                total=total,
                disable=not _progress(progress),
                desc=f"{method} (released)",
                leave=False,
            )
            rec(0, theta, omega)
            theta_out, omega_out = _run_released(
                XPt,
                yPt,
                XHt,
                theta,
                omega,
                eta=eta_,
                lam_P=lP,
                lam_H=lH,
                batch_size=batch_size,
                ridge=nonneg(ridge, "ridge"),
                side=precond_side,
                steps=total,
                gen=gen,
                record=rec,
                record_every=record_every,
                bar=bar,
                regularizers=regularizers,
            )
            bar.close()
            history, lams, total_steps = pd.DataFrame(rows), (lP, lH), total
        else:
            total_steps = 400 if steps is None else integer(steps, "steps", 1)
            th, om, history, info = run(
                prob,
                method,
                policy=policy,
                steps=total_steps,
                eta=eta,
                lam_P=lam_P,
                lam_H=lam_H,
                rho=rho,
                delta=delta,
                mu=mu,
                beta=beta,
                inner_steps=inner_steps,
                theta_init=theta,
                omega_init=omega,
                record_every=record_every,
                conventions=(convention,),
                progress=progress,
            )
            theta_out, omega_out = th[0], om[0]
            history = history.drop(columns="problem")
            lams = (info["lam_P"][0], info["lam_H"][0])
    seconds = time.perf_counter() - start
    moved = float((theta_out - theta).norm() / theta.norm())
    if moved < 1e-12:
        warnings.warn(
            f"immunize({method!r}): θ did not move from θ_0 (relative change {moved:.1e}); "
            "check eta and the weights (a huge weight can make every step bound vanish)",
            RuntimeWarning,
            stacklevel=2,
        )
    settings = dict(
        policy=policy if method in POLICY_METHODS else None,
        steps=total_steps,
        eta=eta,
        rho=rho,
        delta=delta,
        mu=mu,
        beta=beta,
        inner_steps=inner_steps,
        batch_size=batch_size,
        ridge=ridge,
        precond_side=precond_side,
        regularizers=regularizers,
        init=init,
        seed=seed,
        convention=convention,
    )
    return ImmunizationResult(
        method=method,
        history=history,
        lam_P=float(lams[0]),
        lam_H=float(lams[1]),
        seconds=seconds,
        settings=settings,
        theta=theta_out.detach().clone(),
        omega=omega_out.detach().clone(),
    )
