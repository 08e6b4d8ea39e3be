"""exporters/tensorrt.py: the sidecar guard and build choices run everywhere; builds need TensorRT + CUDA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from exporters.__main__ import main
from exporters.tensorrt import (
    SIDECAR_FORMAT,
    DeviceInfo,
    EngineMismatchError,
    Profile,
    check_sidecar,
    choose_typing,
    onnx_precision_for,
    read_sidecar,
    sidecar_path,
)

H100 = DeviceInfo(tensorrt_version="10.13.0.35", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0")


def sidecar_for(device: DeviceInfo) -> dict:
    return {
        "format": SIDECAR_FORMAT,
        "tensorrt_version": device.tensorrt_version,
        "gpu_name": device.gpu_name,
        "compute_capability": device.compute_capability,
        "profiles": [{"min": 1, "opt": 8, "max": 64}],
    }


def test_sidecar_matching_device_passes():
    check_sidecar(sidecar_for(H100), H100, plan="m/model.plan")


@pytest.mark.parametrize(
    ("built", "message"),
    [
        (DeviceInfo("10.8.0.43", H100.gpu_name, "9.0"), r"built with TensorRT 10\.8\.0\.43, this is TensorRT 10\.13"),
        (DeviceInfo("11.0.0", H100.gpu_name, "9.0"), "engines do not carry across TensorRT versions"),
        (DeviceInfo(H100.tensorrt_version, "NVIDIA A100-SXM4-80GB", "8.0"), r"compute capability 8\.0.*H100"),
        (DeviceInfo(H100.tensorrt_version, "NVIDIA H200", "9.0"), "built on NVIDIA H200, this GPU is NVIDIA H100"),
    ],
)
def test_sidecar_mismatch_is_refused_with_reason(built: DeviceInfo, message: str):
    with pytest.raises(EngineMismatchError, match=message) as info:
        check_sidecar(sidecar_for(built), H100, plan="models/x/model.plan")
    assert "models/x/model.plan" in str(info.value) and "python -m exporters tensorrt" in str(info.value)


def test_same_capability_other_gpu_allowed_on_request():
    other = DeviceInfo(H100.tensorrt_version, "NVIDIA H200", "9.0")
    check_sidecar(sidecar_for(other), H100, allow_other_gpu=True)
    # Capability and version mismatches are never allowed.
    with pytest.raises(EngineMismatchError):
        check_sidecar(sidecar_for(DeviceInfo("10.0.1", "NVIDIA H200", "9.0")), H100, allow_other_gpu=True)


def test_sidecar_file_errors(tmp_path: Path):
    plan = tmp_path / "model.plan"
    with pytest.raises(EngineMismatchError, match="sidecar not found"):
        read_sidecar(plan)
    sidecar_path(plan).write_text("{not json")
    with pytest.raises(EngineMismatchError, match="not valid JSON"):
        read_sidecar(plan)
    sidecar_path(plan).write_text(json.dumps({"format": SIDECAR_FORMAT, "gpu_name": "x"}))
    with pytest.raises(EngineMismatchError, match="missing keys"):
        check_sidecar(read_sidecar(plan), H100, plan=plan)
    sidecar_path(plan).write_text(json.dumps({**sidecar_for(H100), "format": 99}))
    with pytest.raises(EngineMismatchError, match="format 99"):
        check_sidecar(read_sidecar(plan), H100, plan=plan)


def test_typing_follows_tensorrt_version():
    # TensorRT 10: fp32 graph + builder flags; TensorRT 11 (no flags): the graph itself in fp16/bf16.
    assert choose_typing("fp16", "10.13.0", True) == "weak"
    assert choose_typing("bf16", "10.13.0", True) == "weak"
    assert choose_typing("fp16", "11.0.0", False) == "strong"
    assert choose_typing("fp32", "11.0.0", False) == "weak"
    assert choose_typing("fp16", "10.13.0", True, "strong") == "strong"
    assert onnx_precision_for("fp16", "strong") == "fp16" and onnx_precision_for("fp16", "weak") == "fp32"
    with pytest.raises(ValueError, match="no FP16/BF16 builder flags"):
        choose_typing("fp16", "11.0.0", False, "weak")
    with pytest.raises(ValueError, match="precision"):
        choose_typing("int8", "10.13.0", True)


def test_profiles():
    assert Profile.parse("1:8:64") == Profile(1, 8, 64)
    assert Profile.parse("32") == Profile(1, 32, 32)
    for bad in ("0:1:2", "8:4:16", "1:2"):
        with pytest.raises(ValueError):
            Profile.parse(bad)


def _have_tensorrt() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


def test_cli_reports_missing_tensorrt(tiny_dir: Path, capsys: pytest.CaptureFixture[str]):
    if _have_tensorrt() is None:
        pytest.skip("TensorRT and a GPU are present: the GPU tests below cover the CLI")
    assert main(["tensorrt", "--model", str(tiny_dir)]) == 1
    err = capsys.readouterr().err
    assert "TensorRT is not installed" in err or "CUDA" in err


@pytest.mark.gpu
@pytest.mark.skipif(_have_tensorrt() is not None, reason=str(_have_tensorrt()))
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_run_and_guard(tiny_dir: Path, tiny_onnx: Path, tmp_path: Path, precision: str):
    import tensorrt as trt

    from exporters.tensorrt import TensorRTRunner, check_engine_parity, export_tensorrt, load_engine

    plan = export_tensorrt(
        tiny_dir, tmp_path / f"{precision}.plan", precision=precision, profiles=[Profile(1, 8, 64)],
        timing_cache=tmp_path / "cache", parity_batches=(1, 7, 64),
    )  # fmt: skip
    sidecar = read_sidecar(plan)
    assert sidecar["tensorrt_version"] == trt.__version__
    assert sidecar["gpu_name"] == torch.cuda.get_device_name(0)
    assert sidecar["profiles"] == [{"min": 1, "opt": 8, "max": 64}]
    assert (tmp_path / "cache").stat().st_size > 0
    report = check_engine_parity(plan, tiny_onnx)
    print(report.table())
    assert report.passed
    out = TensorRTRunner(plan).run(torch.randn(3, 1, 16, 16).numpy(), torch.tensor([0, 1, 2]).numpy())
    assert out["images"].shape == (3, 1, 16, 16) and out["images_uint8"].shape == (3, 16, 16, 1)
    # A sidecar claiming another TensorRT version stops the load before deserialization.
    sidecar_path(plan).write_text(json.dumps({**sidecar, "tensorrt_version": "9.9.9"}))
    with pytest.raises(EngineMismatchError, match="9.9.9"):
        load_engine(plan)
