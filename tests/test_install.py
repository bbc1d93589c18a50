"""tools/install.py: the torch constraint is chosen per machine, and the timm shim only where needed."""

import os
import subprocess
import sys

from tools import install


def test_cpu_machine_without_torch_gets_the_cpu_pin(tmp_path, monkeypatch):
    monkeypatch.setattr(install, "installed_version", lambda dist: None)
    monkeypatch.setattr(install, "nvidia_gpu_present", lambda: False)
    path, why = install.choose_constraints(tmp_path)
    assert path == install.CPU_CONSTRAINTS and "no GPU" in why
    pins = [
        line
        for line in path.read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert pins == ["torch==2.13.0"]


def test_gpu_machine_or_installed_torch_gets_no_machine_specific_pin(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(install, "installed_version", lambda dist: None)
    monkeypatch.setattr(install, "nvidia_gpu_present", lambda: True)
    path, _ = install.choose_constraints(tmp_path)
    assert path.read_text() == ""
    monkeypatch.setattr(install, "installed_version", lambda dist: "2.9.1+cu126")
    path, why = install.choose_constraints(tmp_path)
    assert path.read_text() == "torch==2.9.1+cu126\n" and "keeping" in why


def test_pip_is_called_once_with_requirements_constraints_and_the_package(tmp_path):
    cmd = install.pip_command(tmp_path / "c.txt")
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"]
    assert "-r" in cmd and "-c" in cmd and "-e" in cmd


def test_no_shim_is_written_where_timm_imports(tmp_path, monkeypatch):
    monkeypatch.setattr(install, "timm_import_error", lambda: None)
    install.ensure_timm_importable(site=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_shim_is_written_only_for_the_torchvision_ops_error(tmp_path, monkeypatch):
    errors = iter(["RuntimeError: operator torchvision::nms does not exist", None])
    monkeypatch.setattr(install, "timm_import_error", lambda: next(errors))
    install.ensure_timm_importable(site=tmp_path)
    assert (
        tmp_path / f"{install.SHIM_MODULE}.pth"
    ).read_text() == f"import {install.SHIM_MODULE}\n"
    # in a fresh interpreter (so this process keeps its own torchvision state)
    check = (
        f"import sys, {install.SHIM_MODULE};"
        "print(sorted(n for n in sys.modules if n.startswith('torchvision._')))"
    )
    env = dict(
        os.environ, PYTHONPATH=str(tmp_path)
    )  # -S: no site-packages, only the shim
    out = subprocess.run(
        [sys.executable, "-S", "-c", check], capture_output=True, text=True, env=env
    ).stdout
    assert (
        "torchvision._autograd_registrations" in out
        and "torchvision._meta_registrations" in out
    )


def test_timm_builds_and_runs_a_small_model_offline():
    code = (
        "import timm, torch; m = timm.create_model('resnet18', pretrained=False, num_classes=3).eval();"
        "print(tuple(m(torch.zeros(1, 3, 32, 32)).shape))"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "(1, 3)"
