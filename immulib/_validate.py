"""The one place for argument checks. Every public function of :mod:`immulib` checks its
arguments with these helpers, so the errors read the same everywhere: a ``TypeError`` or
``ValueError`` that names the argument and says what was expected.

The module is private (its name starts with ``_``) because its functions are not part of the
book's vocabulary; the other modules import them by their public names in here.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator

import numpy as np
import torch

__all__ = [
    "as_float64",
    "choice",
    "device",
    "flag",
    "integer",
    "nonneg",
    "number",
    "positive",
    "progress",
    "rows_targets",
    "threads",
]


def as_float64(x, name: str, *, ndim: int | None = None) -> torch.Tensor:
    """Return ``x`` as a float64 torch tensor after checking it is a finite, non-empty real array.

    Accepts torch tensors, numpy arrays and nested sequences of numbers. Gradients are kept
    (tensors are converted with ``.to``, not copied through numpy), so differentiable code can
    call this too. The device of a tensor is kept.

    Chapter: {ref}`ch-condition-numbers`.
    """
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, (np.ndarray, list, tuple)):
        arr = np.asarray(x)
        if arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
        ):
            raise TypeError(
                f"{name} must be an array of numbers, got dtype {arr.dtype}"
            )
        t = torch.from_numpy(np.ascontiguousarray(arr))
    else:
        raise TypeError(
            f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}"
        )
    if t.is_complex():
        raise TypeError(f"{name} must be real, got a complex {t.dtype} tensor")
    t = t.to(torch.float64)
    if ndim is not None and t.ndim != ndim:
        raise ValueError(
            f"{name} must be {ndim}-dimensional, got shape {tuple(t.shape)}"
        )
    if t.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t.detach()).all()):
        raise ValueError(f"{name} contains NaN or infinite entries")
    return t


def rows_targets(
    X,
    y,
    name: str = "F",
    y_name: str = "y",
    *,
    columns: int | None = None,
    columns_of: str = "the first task",
) -> tuple[torch.Tensor, torch.Tensor]:
    """A least-squares task's rows ``X`` (n × d) and targets ``y`` (n,) as detached float64
    tensors on ``X``'s device, checked to match (and, if ``columns`` is given, d = columns: the
    input dimension of ``columns_of``, the task checked first, named in the error).

    Chapter: {ref}`ch-attackers`.
    """
    X = as_float64(X, name, ndim=2).detach()
    y = as_float64(y, y_name, ndim=1).detach().to(X.device)
    if len(y) != len(X):
        raise ValueError(
            f"{y_name} must have {len(X)} entries (one per row of {name}), got {len(y)}"
        )
    if columns is not None and X.shape[1] != columns:
        raise ValueError(
            f"{name} must have {columns} columns (the input dimension of {columns_of}), "
            f"got {X.shape[1]}"
        )
    return X, y


def integer(
    x, name: str, minimum: int | None = None, maximum: int | None = None
) -> int:
    """``x`` as an int (Python or numpy integer, not a bool), within [minimum, maximum]."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    x = int(x)
    if minimum is not None and x < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {x}")
    if maximum is not None and x > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {x}")
    return x


def number(
    x,
    name: str,
    *,
    minimum: float | None = None,
    strict: bool = False,
    maximum: float | None = None,
) -> float:
    """``x`` as a finite float; ``minimum`` is exclusive when ``strict``, ``maximum`` inclusive."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(
        x, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"{name} must be a number, got {type(x).__name__}")
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number, got {x}")
    if minimum is not None and (x < minimum or (strict and x == minimum)):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {x}")
    if maximum is not None and x > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {x}")
    return x


def nonneg(x, name: str) -> float:
    """A finite number >= 0."""
    return number(x, name, minimum=0.0)


def positive(x, name: str) -> float:
    """A finite number > 0."""
    return number(x, name, minimum=0.0, strict=True)


def choice(x, name: str, options: Iterable) -> object:
    """``x`` if it is one of ``options``, else a ValueError listing them."""
    options = tuple(options)
    if not isinstance(x, (str, int, float)) or isinstance(x, bool) or x not in options:
        raise ValueError(f"{name} must be one of {options}, got {x!r}")
    return x


def flag(x, name: str) -> bool:
    """A bool (numpy bools accepted), never a truthy stand-in such as 1 or "yes"."""
    if not isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(x).__name__}")
    return bool(x)


def device(x, name: str = "device") -> torch.device:
    """A torch device that exists on this machine ("cpu", "cuda", "cuda:1", "mps", a torch.device)."""
    if not isinstance(x, (str, torch.device)):
        raise TypeError(f"{name} must be a str or torch.device, got {type(x).__name__}")
    try:
        d = torch.device(x)
    except RuntimeError as err:
        raise ValueError(f"{name}={x!r} is not a valid torch device: {err}") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{name}={x!r} but CUDA is not available on this machine; use device='cpu'"
            )
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise ValueError(
                f"{name}={x!r} but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    if d.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ValueError(
            f"{name}={x!r} but MPS is not available on this machine; use device='cpu'"
        )
    return d


def progress(x, name: str = "progress") -> bool:
    """Resolve a ``progress`` argument: ``None`` (the library's default) shows a bar unless the
    environment variable ``TQDM_DISABLE`` is set to a true value (the book's build sets it)."""
    if x is None:
        return os.environ.get("TQDM_DISABLE", "").strip().lower() not in (
            "1",
            "true",
            "yes",
            "on",
        )
    return flag(x, name)


@contextlib.contextmanager
def threads(n: int | None, name: str = "num_threads") -> Iterator[None]:
    """Run the block with ``n`` torch threads (``None``: leave the setting alone), then restore it.
    For the small matrices of the linear chapters one thread is fastest."""
    if n is not None:
        n = integer(n, name, minimum=1)
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
