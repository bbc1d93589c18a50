"""The one result type of immunization, linear (:func:`immulib.immunize`) and deep
(:func:`immulib.deep_train.immunize_model`) alike.

Conventions (CONTRIBUTING.md): ``theta`` is the immunized linear extractor, ``model`` the
immunized network; exactly one of them is set. ``history`` is a DataFrame with one row per
recorded step (its columns are documented by the function that made it). ``lam_P``/``lam_H``
are the regularizer weights actually used (NaN where a method has none), ``seconds`` the wall
time of the loop, ``settings`` every other knob, so that a result can be rerun.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

__all__ = ["ImmunizationResult"]


@dataclass(frozen=True)
class ImmunizationResult:
    """What every immunization entry point returns; see the module docstring.

    Chapter: {ref}`ch-house-prices`.
    """

    method: str
    history: pd.DataFrame
    lam_P: float
    lam_H: float
    seconds: float
    settings: dict = field(default_factory=dict)
    theta: object = (
        None  # torch.Tensor (D_in × D_hid, float64, detached) for linear extractors
    )
    omega: object = None  # torch.Tensor: the linear pre-training head
    model: object = None  # torch.nn.Module for deep immunization

    def __post_init__(self):
        if (self.theta is None) == (self.model is None):
            raise ValueError(
                "ImmunizationResult needs exactly one of theta (linear) or model (deep)"
            )
