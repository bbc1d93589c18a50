"""immulib: the library of the executable textbook on model immunization.

Companion code to *Model Immunization from a Condition Number Perspective* (Zheng, Bai,
Bullins, Yeh; ICML 2025). Each module computes one thing and names the chapter that derives
it; CONTRIBUTING.md has the module map.

The main names are importable from the package itself::

    import immulib

    result = immulib.immunize(XP, yP, XH)              # Algorithm 1
    immulib.rir(XP, XH, result.theta)                  # relative immunization ratio
    immulib.condition_number(immulib.gram(XP))         # κ of a Gram matrix

They and the modules (``immulib.linalg``, ``immulib.regularizers``, ...) are loaded on first
use (PEP 562), so ``import immulib`` is cheap: it imports neither torch nor any submodule.
Nothing is downloaded or computed at import time.
"""

from __future__ import annotations

import importlib
import pkgutil

__version__ = "0.1.0"

#: Top-level name -> (module, attribute) it comes from, loaded on first access.
_NAMES = {
    "immunize": ("linear", "immunize"),
    "condition_number": ("linalg", "condition_number"),
    "gram": ("linalg", "gram"),
    "probe_hessian": ("linalg", "probe_hessian"),
    "r_ill": ("regularizers", "r_ill"),
    "r_well": ("regularizers", "r_well"),
    "rir": ("metrics", "rir"),
    "RIR": ("metrics", "RIR"),
    "ImmunizationResult": ("results", "ImmunizationResult"),
}

#: The public submodules (every ``immulib/NAME.py`` whose name has no leading underscore).
_MODULES = sorted(
    m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")
)


def __getattr__(name: str):
    if name in _NAMES:
        module, attribute = _NAMES[name]
        value = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    elif name in _MODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = sorted({*_NAMES, *_MODULES})
