"""immulib: the library of the executable textbook on model immunization.

Companion code to *Model Immunization from a Condition Number Perspective* (Zheng, Bai, Bullins,
Yeh; ICML 2025). Each module computes one thing and names the chapter that derives it:

- :mod:`immulib.linalg`: condition numbers (both conventions), numerical rank, Gram matrices,
  the probe Hessian θᵀKθ.
- :mod:`immulib.data`: House Prices, MNIST, Fashion-MNIST and the 8×8 digits, with one
  resolution order for files (argument → ``IMMULIB_DATA`` → cache → download).
- :mod:`immulib.descent`: gradient descent on quadratics and its convergence bound (Eq. (2)).
- :mod:`immulib.regularizers`: R_ill and R_well with closed-form gradients, Theorems 4.1–4.3.
- :mod:`immulib.immunize`: Algorithm 1, the baselines (R_ill Only, IMMA, Opt κ) and the authors'
  released variant.
- :mod:`immulib.metrics`: the relative immunization ratio (Eq. (15), (17)) and the norm ratio (Eq. (16)).
- Deep networks (chapter 07): :mod:`immulib.networks` (timm ResNets and ViTs, the immunized
  block, float32 features), :mod:`immulib.image_data` (image datasets),
  :mod:`immulib.deep_objective` (the objectives on mini-batch features),
  :mod:`immulib.deep_train` (pre-training θ0, ``immunize_model``), :mod:`immulib.deep_eval`
  (RIR_θ0, accuracy, four attackers) and :mod:`immulib.deep_ddp` (``torchrun``).
- :mod:`immulib.rerun`: rerun a chapter with other parameters (jupytext + papermill).

Nothing is downloaded or computed at import time.
"""

__version__ = "0.1.0"
