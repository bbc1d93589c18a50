"""benchmarks/gpu_vit.py: the --quick mode end to end on the CPU (CI), and its agreement check."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_mode_runs_all_four_parts_and_writes_nothing_on_cpu(
    project_data, tmp_path
):
    results = tmp_path / "gpu_results.json"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.gpu_vit",
            "--quick",
            "--results",
            str(results),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    for part in (
        "1. CPU/CUDA agreement",
        "2. vit_tiny",
        "   ours: RIR_θ0",
        "   constrained: RIR_θ0",
        "3. resnet18",
        "4. torchrun --nproc_per_node 1 (gloo): ok",
    ):
        assert any(line.startswith(part) for line in lines), part
    assert "RIR_θ0 Ours" in lines[-1] and "DDP ok" in lines[-1]
    assert not results.exists()  # figures are recorded only on a GPU


def test_agreement_check_of_a_device_with_itself_is_exact(project_data):
    from benchmarks import gpu_vit

    cfg = gpu_vit.settings(True)
    cfg["n_train"], cfg["n_test"] = 64, 16
    dp, dh = gpu_vit.load(cfg)
    out = gpu_vit.agreement(cfg, dp[0], dh[0], devices=("cpu", "cpu"))
    assert (
        out["agree"]
        and out["feature_rel_error"] == 0.0
        and out["log_kappa_error"] == 0.0
    )


def test_recorded_gpu_results_file_is_valid_json_with_the_required_fields():
    record = json.loads((ROOT / "benchmarks" / "gpu_results.json").read_text())
    for entry in record["results"]:
        assert {"benchmark", "device", "date", "commit", "headline"} <= set(entry)
