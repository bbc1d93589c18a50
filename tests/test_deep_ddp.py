"""immulib.deep_ddp: torchrun + DistributedDataParallel, two CPU processes on the gloo backend."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from immulib import deep
from test_deep import TINY, fake_image_folder, tiny

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_torchrun_two_gloo_processes_immunize_only_the_last_block(tmp_path):
    fake_image_folder(tmp_path / "dp", per_class=10)
    fake_image_folder(tmp_path / "dh", classes=("x", "y", "z"), per_class=8, seed=1)
    theta0 = tiny("resnet18", in_chans=3, img_size=32, num_classes=2)
    torch.save(theta0.state_dict(), tmp_path / "theta0.pt")
    out = tmp_path / "immunized.pt"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "immulib.deep_ddp", "--model-name", "resnet18", "--model-kwargs", json.dumps(TINY["resnet18"]),
        "--theta0", str(tmp_path / "theta0.pt"), "--image-folder-dp", str(tmp_path / "dp"),
        "--image-folder-dh", str(tmp_path / "dh"), "--img-size", "32", "--steps", "3", "--batch-size", "4",
        "--lr", "0.01", "--num-workers", "0", "--out", str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "saved" in proc.stdout and "λ_H" in proc.stdout
    after = torch.load(out)
    before = theta0.state_dict()
    trainable = set(deep.trainable_parameter_names(theta0))
    assert set(after) == set(before)
    for name in before:
        if name not in trainable:  # frozen parameters and every BatchNorm buffer are unchanged
            assert torch.equal(before[name], after[name]), name
    assert any(not torch.equal(before[n], after[n]) for n in deep.trainable_parameter_names(theta0, train_head=False))


def test_bad_command_lines_are_rejected():
    from immulib import deep_ddp

    base = ["--model-name", "resnet18", "--image-folder-dp", "a", "--image-folder-dh", "b", "--out", "o.pt"]
    assert deep_ddp.parse_args(base).lambda_h == "auto"
    assert deep_ddp.parse_args(base + ["--lambda-h", "2.5"]).lambda_h == 2.5
    for extra in (["--lambda-p", "lots"], ["--steps", "0"], ["--method", "bogus"]):
        with pytest.raises(SystemExit):
            deep_ddp.parse_args(base + extra)
