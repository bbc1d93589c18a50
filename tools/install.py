"""Install immulib, the book's tool chain and the test tools into the running Python environment.

Run by every ``make`` target with the virtual environment's interpreter
(``.venv/bin/python -m tools.install``). It does three things:

1. **One pip call** for ``requirements.txt`` and ``immulib`` itself (editable, with its ``dev``
   extra: ruff, for ``make check``), so that pip
   resolves torch, torchvision (pulled in by timm) and everything else together.
2. **Torch stays CPU-only where it should.** A plain ``pip install torch`` (or installing timm,
   which needs torchvision, in a later call) pulls the newest CUDA build from PyPI: several GB,
   useless on a machine without an NVIDIA GPU. So when torch is not installed yet and no NVIDIA
   driver is visible, the pip call gets ``constraints/cpu.txt``, which pins the torch version
   whose CPU build the project's machines provide. ``TORCH_INDEX_URL`` adds a package index for
   it (e.g. PyTorch's CPU index on a laptop). When torch is already installed (Colab, a GPU box,
   a second run), the constraint instead pins the installed version, so nothing replaces it.
3. **timm made importable only where it is broken** (see :func:`ensure_timm_importable`).

Set ``IMMULIB_INSTALL_DRY_RUN=1`` to print the pip command without running it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CPU_CONSTRAINTS = ROOT / "constraints" / "cpu.txt"
SHIM_MODULE = "_immulib_torchvision_shim"

# Written into site-packages only when `import timm` fails with the error below.
SHIM_SOURCE = '''"""Make timm importable beside a torchvision whose compiled operators do not match torch.

Written by immulib's tools/install.py because `import timm` failed in this environment with
"operator torchvision::nms does not exist". That happens when the registry's torchvision wheel
is a CUDA build and torch is the CPU build: torchvision's C++ extension then fails to load, and
torchvision/__init__.py goes on to import `_meta_registrations` (and `_autograd_registrations`),
which register Python kernels for the operators the missing extension should have defined, and
crash. Registering empty modules under those names first lets `import torchvision` finish, so
timm (which only needs torchvision's Python transforms) works. Only torchvision's compiled
operators (nms, roi_align, deform_conv2d, ...) stay unavailable; nothing in immulib uses them.
Delete this file and the matching .pth file to undo it.
"""
import sys
import types

for _name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
    sys.modules.setdefault(_name, types.ModuleType(_name))
'''


def nvidia_gpu_present() -> bool:
    """True when an NVIDIA driver is visible (nvidia-smi on PATH or /proc/driver/nvidia)."""
    return (
        shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia").exists()
    )


def installed_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def pip_command(constraints: Path) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--upgrade-strategy",
        "only-if-needed",
    ]
    cmd += [
        "-r",
        str(ROOT / "requirements.txt"),
        "-c",
        str(constraints),
        "-e",
        f"{ROOT}[dev]",
    ]
    if os.environ.get("TORCH_INDEX_URL"):
        cmd += ["--extra-index-url", os.environ["TORCH_INDEX_URL"]]
    return cmd


def timm_import_error() -> str | None:
    """Import timm in a fresh interpreter; return the error text, or None if it works."""
    proc = subprocess.run(
        [sys.executable, "-c", "import timm"],
        capture_output=True,
        text=True,
        check=False,
    )
    return (
        None
        if proc.returncode == 0
        else (proc.stderr.strip().splitlines() or ["?"])[-1]
    )


def ensure_timm_importable(site: Path | None = None) -> None:
    """Write the torchvision shim (a module plus a .pth file) only if ``import timm`` fails.

    On Colab and on any machine where torch and torchvision come from matching builds, timm
    imports and nothing is written.
    """
    error = timm_import_error()
    if error is None:
        print("install: timm imports cleanly; no torchvision shim needed")
        return
    if "torchvision::nms does not exist" not in error:
        sys.exit(
            f"install: `import timm` fails for a reason this script does not handle:\n{error}"
        )
    site = site or Path(sysconfig.get_paths()["purelib"])
    (site / f"{SHIM_MODULE}.py").write_text(SHIM_SOURCE)
    (site / f"{SHIM_MODULE}.pth").write_text(f"import {SHIM_MODULE}\n")
    error = timm_import_error()
    if error is not None:
        sys.exit(
            f"install: the torchvision shim did not make timm importable:\n{error}"
        )
    print(
        f"install: torchvision's compiled ops do not match torch; wrote {SHIM_MODULE} (see it)"
    )


def choose_constraints(tmp: Path) -> tuple[Path, str]:
    """The constraints file for the pip call, and why it was chosen (see the module docstring)."""
    torch_now = installed_version("torch")
    if torch_now is not None:
        keep = tmp / "keep-torch.txt"
        keep.write_text(f"torch=={torch_now}\n")
        return keep, f"keeping the installed torch {torch_now}"
    if nvidia_gpu_present():
        none = tmp / "no-constraints.txt"
        none.write_text("")
        return none, "NVIDIA GPU found: pip chooses the torch build"
    return (
        CPU_CONSTRAINTS,
        f"no GPU: CPU torch pinned by {CPU_CONSTRAINTS.relative_to(ROOT)}",
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        constraints, why = choose_constraints(Path(tmp))
        cmd = pip_command(constraints)
        print(f"install: {why}\ninstall: {' '.join(cmd)}", flush=True)
        if os.environ.get("IMMULIB_INSTALL_DRY_RUN"):
            return
        subprocess.run(cmd, check=True)
    ensure_timm_importable()


if __name__ == "__main__":
    main()
