"""immulib.deep_ddp: torchrun + DistributedDataParallel on the gloo backend, and the evaluation after it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from deep_helpers import TINY, fake_image_folder, tiny

from immulib import deep_ddp, networks

ROOT = Path(__file__).resolve().parent.parent
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "PYTHONPATH": str(ROOT),
}


def _command(tmp_path, nproc, *extra):
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "immulib.deep_ddp",
        "--model-name",
        "resnet18",
        "--model-kwargs",
        json.dumps(TINY["resnet18"]),
        "--data-p",
        str(tmp_path / "dp"),
        "--data-h",
        str(tmp_path / "dh"),
        "--img-size",
        "32",
        "--batch-size",
        "4",
        "--eta",
        "0.01",
        "--num-workers",
        "0",
        "--out",
        str(tmp_path / "immunized.pt"),
        *extra,
    ]


@pytest.mark.slow
def test_torchrun_two_gloo_processes_immunize_only_the_last_block_and_evaluate(
    tmp_path,
):
    fake_image_folder(tmp_path / "dp", per_class=10)
    fake_image_folder(tmp_path / "dh", classes=("x", "y", "z"), per_class=8, seed=1)
    theta0 = tiny("resnet18", in_chans=3, img_size=32, num_classes=2)
    torch.save(theta0.state_dict(), tmp_path / "theta0.pt")
    cmd = _command(
        tmp_path,
        2,
        "--theta0",
        str(tmp_path / "theta0.pt"),
        "--steps",
        "3",
        "--evaluate",
        "--n-groups",
        "2",
        "--group-size",
        "4",
        "--attack-epochs",
        "1",
    )
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "saved" in proc.stdout and "λ_H" in proc.stdout and "RIR_θ0" in proc.stdout
    after = torch.load(tmp_path / "immunized.pt", weights_only=True)
    before = theta0.state_dict()
    trainable = set(networks.trainable_parameter_names(theta0))
    assert set(after) == set(before)
    for name in before:
        if (
            name not in trainable
        ):  # frozen parameters and every BatchNorm buffer are unchanged
            assert torch.equal(before[name], after[name]), name
    assert any(
        not torch.equal(before[n], after[n])
        for n in networks.trainable_parameter_names(theta0, train_head=False)
    )
    report = json.loads((tmp_path / "immunized.eval.json").read_text())
    assert (
        report["rir_theta0"]["rir"] > 0
        and report["world_size"] == 2
        and report["steps"] == 3
    )
    assert set(report["attacks"]["immunized"]) == {
        "probe",
        "probe_std",
        "finetune_block",
        "finetune_all",
    }
    assert all(len(c) == 2 for c in report["attacks"]["theta0"].values())
    # the evaluation again, later, from the saved files
    (tmp_path / "immunized.eval.json").unlink()
    again = subprocess.run(
        cmd + ["--evaluate-only"],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert (
        json.loads((tmp_path / "immunized.eval.json").read_text())["rir_theta0"]
        == report["rir_theta0"]
    )


def test_theta0_files_are_loaded_with_weights_only(tmp_path, monkeypatch):
    """A checkpoint that would run code on load is refused (torch.load(weights_only=True))."""

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"conv1.weight": Boom()}, tmp_path / "evil.pt")
    args = deep_ddp.parse_args(
        [
            "--model-name",
            "resnet18",
            "--model-kwargs",
            json.dumps(TINY["resnet18"]),
            "--data-p",
            "a",
            "--data-h",
            "b",
            "--out",
            "o.pt",
            "--theta0",
            str(tmp_path / "evil.pt"),
        ]
    )
    ds = type("D", (), {"num_classes": 2})()
    monkeypatch.setattr(deep_ddp.image_data, "num_classes", lambda d: 2)
    with pytest.raises(Exception, match="[Ww]eights only|weights_only|Unsupported"):
        deep_ddp._build(args, ds)


def test_bad_command_lines_are_rejected():
    base = [
        "--model-name",
        "resnet18",
        "--data-p",
        "a",
        "--data-h",
        "b",
        "--out",
        "o.pt",
    ]
    assert deep_ddp.parse_args(base).lam_H == "auto"
    assert deep_ddp.parse_args(base + ["--lam-H", "2.5"]).lam_H == 2.5
    assert deep_ddp.parse_args(base + ["--epochs", "3"]).epochs == 3.0
    for extra in (
        ["--lam-P", "lots"],
        ["--lam-P", "-1"],
        ["--steps", "0"],
        ["--method", "bogus"],
        ["--eta", "0"],
        ["--epochs", "0"],
        ["--attackers", "probe,sgd"],
        ["--model-kwargs", "{oops"],
    ):
        with pytest.raises(SystemExit):
            deep_ddp.parse_args(base + extra)


def test_image_folders_are_normalised_for_the_model_that_reads_them(tmp_path):
    """An image folder is normalised with the statistics the model's timm weights declare
    (ImageNet's for resnet18, 0.5 and 0.5 for a ViT-B/16), not one fixed pair for all."""
    from immulib import image_data

    fake_image_folder(tmp_path / "f", per_class=3)
    imagenet = networks.input_statistics("resnet18")
    assert imagenet == (image_data.IMAGENET_MEAN, image_data.IMAGENET_STD)
    half = networks.input_statistics("vit_base_patch16_224", "vit_tiny_patch16_224")
    assert half == ((0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="resnet18.*vit_base_patch16_224"):
        networks.input_statistics("resnet18", "vit_base_patch16_224")
    for bad, err in (
        ((), ValueError),
        (("no_such_net",), ValueError),
        ((3,), TypeError),
    ):
        with pytest.raises(err):
            networks.input_statistics(*bad)
    # the same pixels under both normalisations
    a = image_data.ImageFolderDataset(tmp_path / "f", img_size=16)
    b = image_data.ImageFolderDataset(
        tmp_path / "f", img_size=16, mean=half[0], std=half[1]
    )
    pixels_a = (
        a[0][0] * torch.tensor(imagenet[1])[:, None, None]
        + torch.tensor(imagenet[0])[:, None, None]
    )
    pixels_b = b[0][0] * 0.5 + 0.5
    assert torch.allclose(pixels_a, pixels_b, atol=1e-6)
    assert not torch.allclose(a[0][0], b[0][0])
    assert image_data.fingerprint(a) != image_data.fingerprint(b)  # cache keys differ
    # the DDP script picks them from --model-name
    args = deep_ddp.parse_args(
        ["--model-name", "vit_base_patch16_224", "--data-p", str(tmp_path / "f"),
         "--data-h", "b", "--out", "o.pt", "--img-size", "16"]
    )  # fmt: skip
    train, test = deep_ddp.load_data(str(tmp_path / "f"), args)
    assert train.mean.tolist() == test.std.tolist() == [0.5] * 3
    for kw, name in (
        (dict(mean=(0.5, 0.5)), "mean"),
        (dict(std=(0.5, 0.0, 0.5)), "std"),
    ):
        with pytest.raises(ValueError, match=name):
            image_data.ImageFolderDataset(tmp_path / "f", **kw)
