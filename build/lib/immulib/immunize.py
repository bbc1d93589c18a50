"""Algorithm 1 of the paper (condition-number regularized gradient descent) and its three baselines.

The defender trains a linear feature extractor θ (D × D) and a pre-training head ω on D_P so that
the ℓ2 linear probe on the harmful inputs X_H becomes ill-conditioned, H_H(θ) = θᵀK_Hθ, while the
probe on D_P stays well-conditioned, H_P(θ) = θᵀK_Pθ (Eq. (11)). One entry point,
:func:`immunize`, runs

* ``"ours"``: Algorithm 1 (paper §3.2), full batch. ω takes a gradient step on the D_P loss; θ takes
  the supervised gradient step plus the K⁻¹-preconditioned regularizer steps, computed as
  θ(I − 2η_P G_well − 2η_H G_ill) (Theorems 4.2–4.3; K⁻¹ is never formed). Step sizes: see
  :func:`immunize`. With ``optimizer="adam"``, ``batch_size``, ``ridge`` and ``precond_side`` it
  becomes the authors' released variant (mini-batch Gram matrices, Adam, ridge in the
  preconditioner), computed with the "dummy layer" :func:`precondition`;
* ``"r_ill_only"``: Algorithm 1 with λ_P = 0 (supervised loss and K_H⁻¹-preconditioned R_ill kept);
* ``"imma"``: the bi-level baseline: the harmful ℓ2 loss after ``inner_steps`` unrolled,
  differentiable gradient steps of the attacker's probe is maximised, the D_P loss minimised;
* ``"opt_kappa"``: gradient descent on L(D_P) + μ(log κ(H_P) − log κ(H_H)) through
  ``torch.linalg.eigvalsh``.

Derived and run in the chapter "Immunizing a linear model: House Prices"
(``book/05_house_prices.md``); the regularizers come from :mod:`immulib.regularizers`.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import regularizers as reg
from .linalg import CONVENTIONS, as_float64, condition_number, gram, numerical_rank, probe_hessian

__all__ = [
    "AUTHORS_HOUSE_PRICES",
    "METHODS",
    "ImmunizeResult",
    "algorithm1_direction",
    "algorithm1_direction_autograd",
    "immunize",
    "precondition",
]

METHODS: tuple[str, ...] = ("ours", "r_ill_only", "imma", "opt_kappa")

#: The authors' released house-price configuration (paper_notes §4.2): Adam, lr 5e-3, mini-batches
#: of 64 (drop_last), λ_P = 100, λ_H = 10⁷, ridge 1 in the preconditioner, applied on the output
#: side (the code left-multiplies ∇_W with W = θᵀ), nn.Linear's default initialisation,
#: ω ~ N(0, I). The code trains 10 epochs; the paper says 100.
AUTHORS_HOUSE_PRICES: dict[str, object] = dict(
    optimizer="adam", eta=5e-3, batch_size=64, lam_P=100.0, lam_H=1e7, ridge=1.0,
    precond_side="output", init="linear_default", epochs=10,
)


# ---------------------------------------------------------------------------------------------
# the "dummy layer": identity forward, K⁻¹ in backward


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


def precondition(theta: torch.Tensor, K, *, ridge: float = 0.0, side: str = "theta") -> torch.Tensor:
    """The "dummy layer" of paper §4.4 / App. C.3: returns θ; its backward multiplies by (K + ridge·I)⁻¹.

    ``side="theta"`` (the paper, Algorithm 1): the gradient G w.r.t. θ becomes (K + rI)⁻¹G, so
    R(θ̃ᵀKθ̃) with θ̃ = precondition(θ, K) back-propagates K⁻¹∇_θR = 2θ∇_HR in one backward pass.
    ``side="output"`` (the authors' released code, which left-multiplies ∇_W with W = θᵀ): the
    gradient becomes G(K + rI)⁻¹. Chapter: "Immunizing a linear model: House Prices".
    """
    if not isinstance(theta, torch.Tensor):
        raise TypeError(f"theta must be a torch.Tensor, got {type(theta).__name__}")
    if side not in ("theta", "output"):
        raise ValueError(f'side must be "theta" or "output", got {side!r}')
    _nonneg(ridge, "ridge")
    K = as_float64(K, "K", ndim=2).detach()
    if K.shape[0] != K.shape[1] or K.shape[0] != theta.shape[0 if side == "theta" else 1]:
        raise ValueError(f"K must be square and match theta's {side} side, got {tuple(K.shape)}")
    K = K + ridge * torch.eye(K.shape[0], dtype=K.dtype)
    return _Precondition.apply(theta, K, side)


# ---------------------------------------------------------------------------------------------
# one step of Algorithm 1, in its two forms


def _sup_grads(XP, yP, theta, omega):
    """Gradients of L = (1/N)‖X_Pθω − y_P‖² (the MSE of the released code) w.r.t. θ and ω."""
    r = XP @ (theta @ omega) - yP
    g = (2 / len(yP)) * (XP.T @ r)
    return torch.outer(g, omega), theta.T @ g, float(r @ r) / len(yP)


def algorithm1_direction(XP, yP, XH, theta, omega, lam_P: float, lam_H: float, *, k_H: int | None = None):
    """Line 6 of Algorithm 1 without η: ∇_θL + λ_P K_P⁻¹∇_θR_well(H_P) + λ_H K_H⁻¹∇_θR_ill(H_H).

    Closed form (Theorems 4.2–4.3): K⁻¹∇_θR(θᵀKθ) = 2θG with G = ∇_H R, so no inverse is formed.
    Returns the θ-direction; compare :func:`algorithm1_direction_autograd`.
    """
    XP, yP, XH, theta, omega = (as_float64(a, n) for a, n in
                                ((XP, "XP"), (yP, "yP"), (XH, "XH"), (theta, "theta"), (omega, "omega")))
    g_theta, _, _ = _sup_grads(XP, yP, theta, omega)
    G = lam_P * reg.g_well(probe_hessian(theta, gram(XP))) + lam_H * reg.g_ill(probe_hessian(theta, gram(XH)), k=k_H)
    return g_theta + 2 * theta @ G


def _reg_loss(XP, yP, XH, theta, omega, lam_P, lam_H, *, ridge=0.0, side="theta", k_H=None):
    """L(ω, θ) + λ_P R_well(θ̃_PᵀK_Pθ̃_P) + λ_H R_ill(θ̃_HᵀK_Hθ̃_H), θ̃ = precondition(θ, K)."""
    KP, KH = gram(XP), gram(XH)
    loss = ((XP @ theta @ omega - yP) ** 2).mean()
    if lam_P:
        loss = loss + lam_P * reg.r_well(probe_hessian(precondition(theta, KP, ridge=ridge, side=side), KP))
    if lam_H:
        loss = loss + lam_H * reg.r_ill(probe_hessian(precondition(theta, KH, ridge=ridge, side=side), KH), k=k_H)
    return loss


def algorithm1_direction_autograd(XP, yP, XH, theta, omega, lam_P: float, lam_H: float, *,
                                  k_H: int | None = None, ridge: float = 0.0, side: str = "theta"):
    """The same direction as :func:`algorithm1_direction`, from one backward pass through the dummy layer.

    With ``ridge=0`` and ``side="theta"`` it equals the closed form (tested); the other values give
    the authors' released variant.
    """
    theta = as_float64(theta, "theta").detach().requires_grad_(True)
    loss = _reg_loss(as_float64(XP, "XP"), as_float64(yP, "yP"), as_float64(XH, "XH"), theta,
                     as_float64(omega, "omega"), lam_P, lam_H, ridge=ridge, side=side, k_H=k_H)
    (grad,) = torch.autograd.grad(loss, theta)
    return grad


# ---------------------------------------------------------------------------------------------
# the result and argument checks


@dataclass(frozen=True)
class ImmunizeResult:
    """What :func:`immunize` returns.

    ``theta`` (D × D) and ``omega`` (D) are float64 and detached. ``history`` has one row per
    recorded step: ``step``, ``kappa_P`` = κ(θᵀK_Pθ), ``kappa_H`` = κ(θᵀK_Hθ) (convention
    ``convention``), ``loss_P`` (the D_P MSE) and ``objective`` (the method's objective where it
    is cheap to report, else NaN). ``lam_P``/``lam_H`` are the regularizer weights used (NaN when
    the method has none), ``seconds`` the wall time of the loop.
    """

    method: str
    theta: torch.Tensor
    omega: torch.Tensor
    history: pd.DataFrame
    lam_P: float
    lam_H: float
    seconds: float
    settings: dict = field(default_factory=dict)


def _nonneg(x, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(x).__name__}")
    if not (math.isfinite(x) and x >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {x}")
    return float(x)


def _pos(x, name: str) -> float:
    if _nonneg(x, name) <= 0:
        raise ValueError(f"{name} must be > 0, got {x}")
    return float(x)


def _int(x, name: str, minimum: int) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    if x < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {x}")
    return x


@contextlib.contextmanager
def _threads(n: int | None):
    """Run with ``n`` torch threads, restoring the previous setting (small matrices: 1 is fastest)."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ---------------------------------------------------------------------------------------------
# the methods: each returns (theta, omega, objective) after one step


def _step_ours_gd(s, theta, omega):
    """One full-batch step of Algorithm 1 with the step sizes documented in :func:`immunize`."""
    HP, HH = probe_hessian(theta, s["KP"]), probe_hessian(theta, s["KH"])
    lam_HP = torch.linalg.eigvalsh(HP)
    g_theta, g_omega, loss = _sup_grads(s["XP"], s["yP"], theta, omega)
    M = torch.zeros_like(theta)
    eta_P = eta_H = 0.0
    if s["lam_P"] > 0:
        GP = reg.g_well(HP)
        # Theorem 4.3 (1); it needs σ_k > 0, which rounding can break when H_P is nearly singular
        bound = reg.safe_step_r_well(HP, k=s["k_P"]) if float(lam_HP[-s["k_P"]]) > 0 else 0.0
        eta_P = s["rho"] * bound if s["balanced"] else min(s["eta"] * s["lam_P"], s["rho"] * bound)
        M = M + 2 * eta_P * GP
    if s["lam_H"] > 0:
        GH = reg.g_ill(HH, k=s["k_H"])
        if s["balanced"] and s["lam_P"] > 0:  # ‖η_H·2θG_H‖ = balance·‖η_P·2θG_P‖: the paper's balancing
            eta_H = s["balance"] * eta_P * float((theta @ GP).norm() / (theta @ GH).norm())
        elif s["balanced"]:  # R_ill Only: the largest step the trust region allows
            eta_H = math.inf
        else:
            eta_H = s["eta"] * s["lam_H"]
        eta_H = min(eta_H, s["delta"] / (2 * float(GH.norm())))  # ‖2η_H G_H‖₂ ≤ ‖·‖_F ≤ δ
        M = M + 2 * eta_H * GH
    s["eta_P_t"], s["eta_H_t"] = eta_P, eta_H
    n = len(s["yP"])
    eta_w = min(s["eta"], n / (2 * float(lam_HP[-1])))
    eta_t = min(s["eta"], n / (2 * s["LK"] * float(omega @ omega) + 1e-300))
    return theta - eta_t * g_theta - theta @ M, omega - eta_w * g_omega, loss


def _batches(n, batch_size, gen):
    if batch_size is None:
        return [slice(None)]
    perm = torch.randperm(n, generator=gen)
    return [perm[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]  # drop_last


def _log_kappa(H, k):
    """log σ_max − log σ_k of a PSD matrix, differentiable through eigvalsh (σ_k: k-th largest)."""
    lam = torch.linalg.eigvalsh(H)
    # on rank-deficient data rounding can push σ_k to or below 0; floor it (its gradient is then 0)
    return torch.log(lam[-1]) - torch.log(lam[-k].clamp_min(float(lam[-1].detach()) * 1e-15))


def _objective(s, theta, omega, XP, yP, XH):
    """The differentiable objective of the autograd-based methods, on one (mini-)batch."""
    m = s["method"]
    if m in ("ours", "r_ill_only"):
        return _reg_loss(XP, yP, XH, theta, omega, s["lam_P"], s["lam_H"],
                         ridge=s["ridge"], side=s["precond_side"], k_H=s["k_H"] if s["batch_size"] is None else None)
    loss = ((XP @ theta @ omega - yP) ** 2).mean()
    if m == "opt_kappa":
        HP, HH = probe_hessian(theta, gram(XP)), probe_hessian(theta, gram(XH))
        return loss + s["mu"] * (_log_kappa(HP, s["k_P"]) - _log_kappa(HH, s["k_H"]))
    # imma: harmful loss after `inner_steps` differentiable GD steps of the attacker's probe, w0 = 0,
    # step 1/L with L = λ_max of the probe loss's Hessian (2/N)θᵀK_Hθ (differentiable: scale-free)
    F = XH @ theta
    yH = s["yH"] if XH is s["XH"] else s["yH_batch"]
    A = (2 / len(yH)) * probe_hessian(theta, gram(XH))
    alpha = 1 / torch.linalg.eigvalsh(A)[-1]
    w = torch.zeros(theta.shape[1], dtype=theta.dtype)
    for _ in range(s["inner_steps"]):
        w = w - alpha * (2 / len(yH)) * (F.T @ (F @ w - yH))
    return loss - s["mu"] * ((F @ w - yH) ** 2).mean()


# ---------------------------------------------------------------------------------------------
# the entry point


def immunize(
    XP,
    yP,
    XH,
    *,
    method: str = "ours",
    yH=None,
    steps: int | None = None,
    epochs: int | None = None,
    eta: float | None = None,
    lam_P: float | None = None,
    lam_H: float | None = None,
    balance: float = 1e-5,
    rho: float = 0.9,
    delta: float = 0.01,
    mu: float = 1.0,
    inner_steps: int = 10,
    optimizer: str = "gd",
    batch_size: int | None = None,
    ridge: float = 0.0,
    precond_side: str = "theta",
    init: str = "identity",
    theta0=None,
    convention: str = "pinv",
    record_every: int = 1,
    seed: int = 0,
    num_threads: int | None = 1,
    progress: bool = True,
) -> ImmunizeResult:
    """Immunize a linear feature extractor θ on (X_P, y_P) against the harmful inputs X_H.

    Parameters
    ----------
    XP, yP, XH
        D_P's inputs (N_P × D) and targets (N_P), D_H's inputs (N_H × D). Float64 inside.
    method
        ``"ours"`` (Algorithm 1), ``"r_ill_only"``, ``"imma"`` (needs ``yH``) or ``"opt_kappa"``.
    steps, epochs
        Number of updates (full batch), or of epochs over mini-batches with ``batch_size``. Give
        at most one; the default is 500 steps (``"ours"``, ``"r_ill_only"``) or 300 (baselines).
    eta
        Learning rate η. Default 0.001 for ``"ours"``/``"r_ill_only"`` with GD (the paper's 0.005
        slows the whitening of H_P: each supervised θ-step is a rank-one change the R_well steps
        must undo; the chapter measures both), 0.005 for the other GD methods; for ``optimizer="adam"`` the
        Adam learning rate (default 5e-3, the released code's). In ``"ours"``/``"r_ill_only"``
        with GD, η is the supervised step on θ and ω, each capped by the inverse Lipschitz
        constant of its gradient (2‖ω‖²σ_max(K_P)/N and 2σ_max(H_P)/N).
    lam_P, lam_H, balance, rho, delta
        Regularizer weights of Algorithm 1 and how its steps are sized (GD only). With one fixed
        η the regularizer steps diverge or stall, because ∇R scales with the spectrum. So:

        * ``lam_P = lam_H = None`` (default, "balanced"): the R_well step is η_P,t = ρ·(the
          Theorem 4.3 (1) bound :func:`immulib.regularizers.safe_step_r_well` at θ_t), and the
          R_ill step η_H,t is chosen so that its preconditioned gradient step has ``balance``
          times the norm of the R_well step, ‖η_H,t·2θG_ill‖ = balance·‖η_P,t·2θG_well‖ (the
          paper balances the two gradient norms; the default 1e-5 is the ratio the released
          λ_P = 100, λ_H = 10⁷ give on mini-batches of House Prices, computed in the chapter).
          The reported λ's are the effective η_·,t/η at the first step.
        * explicit ``lam_P``/``lam_H``: the steps are η·λ_P and η·λ_H, capped by the same bounds.

        The R_ill step is capped so that ‖2η_H G_ill‖_F ≤ ``delta``: θ then changes by at most
        that relative amount along any direction. (The Theorem 4.3 (2) bound
        :func:`immulib.regularizers.max_step_r_ill` guarantees κ(H_H) grows, but at that bound
        the top eigenvalues of H_H grow by up to (1 + σ_i/(kσ_min))² per step, which wrecks
        H_P through the shared θ.) For
        ``"r_ill_only"`` λ_P = 0 and the R_ill step is that cap. With ``optimizer="adam"`` the
        λ's are used as given (default: the released 100 and 10⁷).
    mu
        Weight of the baseline's term: ``"imma"`` minimises L_P − μ·L_H(w_T); ``"opt_kappa"``
        minimises L_P + μ(log κ(H_P) − log κ(H_H)).
    inner_steps
        ``"imma"``: unrolled attacker steps (probe from w = 0, step 1/λ_max of its Hessian).
        Both baselines run gradient descent with the gradient norm of (θ, ω) clipped at 1.
    optimizer, batch_size, ridge, precond_side
        ``"gd"`` (the paper) or ``"adam"``; mini-batch size (None: full batch; drop_last);
        ridge added to K in the dummy-layer preconditioner; ``"theta"`` (the paper) or
        ``"output"`` (the released code). Any non-default value makes ``"ours"`` use the
        dummy-layer autograd form, e.g. ``**AUTHORS_HOUSE_PRICES``.
    init, theta0
        θ_0: ``"identity"`` (default) or ``"linear_default"`` (nn.Linear's U(±1/√D), the released
        code), or an explicit ``theta0``. ω_0 ~ N(0, I/D) (``"identity"``) or N(0, I)
        (``"linear_default"``), drawn from ``seed``.
    convention
        κ convention of the recorded history (see :func:`immulib.linalg.condition_number`).
    record_every
        Record κ every this many steps (and at the last step).
    seed
        Seeds every random draw (θ_0, ω_0, mini-batch order); reruns with one seed are identical.
    num_threads
        torch threads during the loop (restored afterwards); 1 is fastest for these small matrices.
    progress
        Show a tqdm progress bar.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if optimizer not in ("gd", "adam"):
        raise ValueError(f'optimizer must be "gd" or "adam", got {optimizer!r}')
    if precond_side not in ("theta", "output"):
        raise ValueError(f'precond_side must be "theta" or "output", got {precond_side!r}')
    if init not in ("identity", "linear_default"):
        raise ValueError(f'init must be "identity" or "linear_default", got {init!r}')
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    XP, XH = as_float64(XP, "XP", ndim=2), as_float64(XH, "XH", ndim=2)
    yP = as_float64(yP, "yP", ndim=1)
    if len(yP) != len(XP):
        raise ValueError(f"yP must have {len(XP)} entries (one per row of XP), got {len(yP)}")
    if XH.shape[1] != XP.shape[1]:
        raise ValueError(f"XH must have {XP.shape[1]} columns like XP, got {XH.shape[1]}")
    if method == "imma":
        if yH is None:
            raise ValueError('method="imma" needs the harmful targets yH')
        yH = as_float64(yH, "yH", ndim=1)
        if len(yH) != len(XH):
            raise ValueError(f"yH must have {len(XH)} entries (one per row of XH), got {len(yH)}")
    if steps is not None and epochs is not None:
        raise ValueError("give steps or epochs, not both")
    if batch_size is not None:
        _int(batch_size, "batch_size", 1)
        if batch_size > min(len(XP), len(XH)):
            raise ValueError(f"batch_size must be <= {min(len(XP), len(XH))}, got {batch_size}")
    if epochs is not None:
        _int(epochs, "epochs", 1)
    else:
        steps = _int(steps, "steps", 1) if steps is not None else (400 if method in ("ours", "r_ill_only") else 300)
    balance, rho, delta, mu, ridge = (_nonneg(balance, "balance"), _pos(rho, "rho"), _pos(delta, "delta"),
                                      _pos(mu, "mu"), _nonneg(ridge, "ridge"))
    if rho >= 1:
        raise ValueError(f"rho must be < 1 (a fraction of the Theorem 4.3 bound), got {rho}")
    inner_steps = _int(inner_steps, "inner_steps", 1)
    record_every = _int(record_every, "record_every", 1)
    seed = _int(seed, "seed", 0)
    if eta is None:
        eta = 1e-3 if optimizer == "gd" and method in ("ours", "r_ill_only") else 5e-3
    eta = _pos(eta, "eta")
    for name, v in (("lam_P", lam_P), ("lam_H", lam_H)):
        if v is not None:
            _nonneg(v, name)
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, got {type(progress).__name__}")

    D = XP.shape[1]
    gen = torch.Generator().manual_seed(seed)
    if theta0 is not None:
        theta = as_float64(theta0, "theta0", ndim=2).detach().clone()
        if theta.shape != (D, D):
            raise ValueError(f"theta0 must be {D} × {D}, got {tuple(theta.shape)}")
    elif init == "identity":
        theta = torch.eye(D, dtype=torch.float64)
    else:
        theta = (torch.rand(D, D, generator=gen, dtype=torch.float64) * 2 - 1) / math.sqrt(D)
    omega = torch.randn(D, generator=gen, dtype=torch.float64) / (math.sqrt(D) if init == "identity" else 1.0)

    KP, KH = gram(XP), gram(XH)
    autograd_ours = optimizer == "adam" or batch_size is not None or ridge > 0 or precond_side != "theta"
    s = dict(method=method, XP=XP, yP=yP, XH=XH, yH=yH, KP=KP, KH=KH, eta=eta, rho=rho, delta=delta,
             balance=balance, mu=mu, inner_steps=inner_steps, ridge=ridge, precond_side=precond_side,
             batch_size=batch_size, k_P=numerical_rank(probe_hessian(theta, KP)),
             k_H=numerical_rank(probe_hessian(theta, KH)), LK=float(torch.linalg.eigvalsh(KP)[-1]))
    s["balanced"] = lam_P is None and lam_H is None and not autograd_ours
    if method in ("ours", "r_ill_only"):
        if autograd_ours:
            s["lam_P"] = AUTHORS_HOUSE_PRICES["lam_P"] if lam_P is None else lam_P
            s["lam_H"] = AUTHORS_HOUSE_PRICES["lam_H"] if lam_H is None else lam_H
        else:
            s["lam_P"] = 1.0 if lam_P is None else lam_P
            s["lam_H"] = 1.0 if lam_H is None else lam_H
        if method == "r_ill_only":
            s["lam_P"] = 0.0
    else:
        s["lam_P"] = s["lam_H"] = float("nan")

    use_gd_closed_form = method in ("ours", "r_ill_only") and not autograd_ours
    opt = None
    if not use_gd_closed_form:
        theta.requires_grad_(True)
        omega.requires_grad_(True)
        opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)([theta, omega], lr=eta)

    n_rows = min(len(XP), len(XH))
    if epochs is not None:
        n_batches = len(_batches(n_rows, batch_size, torch.Generator())) if batch_size else 1
        steps = epochs * n_batches
    rows, first_lams = [], None

    def record(t, objective):
        with torch.no_grad():
            th = theta.detach()
            HP, HH = probe_hessian(th, KP), probe_hessian(th, KH)
            rows.append(dict(
                step=t, kappa_P=condition_number(HP, convention=convention),
                kappa_H=condition_number(HH, convention=convention),
                loss_P=float(((XP @ th @ omega.detach() - yP) ** 2).mean()), objective=objective,
            ))

    start = time.perf_counter()
    bar = tqdm(total=steps, disable=not progress, desc=method, leave=False)
    with _threads(num_threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", reg.NonUniqueSingularValueWarning)
        record(0, float("nan"))
        t = 0
        while t < steps:
            batches = _batches(n_rows, batch_size, gen)
            for idx in batches:
                if t >= steps:
                    break
                if use_gd_closed_form:
                    new_theta, omega, loss = _step_ours_gd(s, theta, omega)
                    if first_lams is None and s["balanced"]:  # report the effective η_·,0/η
                        first_lams = (s["eta_P_t"] / eta, s["eta_H_t"] / eta)
                    theta, objective = new_theta, float("nan")
                else:
                    bP, bH = XP[idx], XH[idx]
                    s["yH_batch"] = yH[idx] if yH is not None else None
                    opt.zero_grad()
                    obj = _objective(s, theta, omega, bP, yP[idx], bH if batch_size else XH)
                    obj.backward()
                    if optimizer == "gd" and method in ("imma", "opt_kappa"):
                        # −log σ_min and the unrolled attacker have gradients that blow up as
                        # σ_min → 0; clip the gradient norm of (θ, ω) at 1 (documented choice)
                        torch.nn.utils.clip_grad_norm_([theta, omega], 1.0)
                    opt.step()
                    objective = float(obj.detach())
                t += 1
                bar.update(1)
                if t % record_every == 0 or t == steps:
                    record(t, objective)
    bar.close()
    seconds = time.perf_counter() - start
    lams = first_lams or (s["lam_P"], s["lam_H"])
    settings = dict(steps=steps, eta=eta, optimizer=optimizer, batch_size=batch_size, ridge=ridge,
                    precond_side=precond_side, init=init, balance=balance, rho=rho, delta=delta, mu=mu,
                    inner_steps=inner_steps, seed=seed, convention=convention)
    return ImmunizeResult(method, theta.detach().clone(), omega.detach().clone(), pd.DataFrame(rows),
                          float(lams[0]), float(lams[1]), seconds, settings)

