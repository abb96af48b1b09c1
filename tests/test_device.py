"""moe_tutorial.device: backend choice, describe(), array helpers and launch routing."""
import numpy as np
import pytest

import moe_tutorial as mt
from moe_tutorial import device

GPU_OK, GPU_WHY = device.gpu_status()
needs_no_gpu = pytest.mark.skipif(GPU_OK, reason="checks the behaviour of a machine without GPU")


@pytest.fixture
def no_gpu(monkeypatch):
    """Pretend this machine has no usable GPU, whatever it really has."""
    monkeypatch.setattr(device, "gpu_status", lambda: (False, "pretend: no GPU here"))


# --- MOE_TUTORIAL_DEVICE --------------------------------------------------------------------

@pytest.mark.parametrize("value, want", [("auto", "auto"), ("gpu", "gpu"), ("cpu", "cpu"),
                                         (" CPU ", "cpu"), ("Gpu", "gpu"), ("", "auto")])
def test_requested_reads_env(monkeypatch, value, want):
    monkeypatch.setenv("MOE_TUTORIAL_DEVICE", value)
    assert device.requested() == want


def test_requested_defaults_to_auto(monkeypatch):
    monkeypatch.delenv("MOE_TUTORIAL_DEVICE", raising=False)
    assert device.requested() == "auto"


@pytest.mark.parametrize("value", ["cuda", "tpu", "0", "gpu0"])
def test_invalid_device_value_names_the_variable(monkeypatch, value):
    monkeypatch.setenv("MOE_TUTORIAL_DEVICE", value)
    with pytest.raises(ValueError, match="MOE_TUTORIAL_DEVICE") as info:
        device.backend()
    assert repr(value) in str(info.value)


def test_cpu_choice_is_cpu_even_with_a_gpu(monkeypatch):
    monkeypatch.setenv("MOE_TUTORIAL_DEVICE", "cpu")
    assert device.backend() == "cpu"
    assert mt.xp is np
    assert device.get_xp() is np


def test_auto_follows_gpu_status(monkeypatch):
    monkeypatch.setenv("MOE_TUTORIAL_DEVICE", "auto")
    assert device.backend() == ("gpu" if GPU_OK else "cpu")


def test_auto_without_gpu_falls_back_to_cpu(monkeypatch, no_gpu):
    monkeypatch.setenv("MOE_TUTORIAL_DEVICE", "auto")
    assert device.backend() == "cpu"


def test_gpu_requested_without_gpu_says_why(monkeypatch, no_gpu):
    monkeypatch.setenv("MOE_TUTORIAL_DEVICE", "gpu")
    with pytest.raises(RuntimeError, match="MOE_TUTORIAL_DEVICE=gpu.*pretend: no GPU here"):
        device.backend()


@needs_no_gpu
def test_gpu_requested_on_this_machine_gives_the_real_reason(monkeypatch):
    monkeypatch.setenv("MOE_TUTORIAL_DEVICE", "gpu")
    with pytest.raises(RuntimeError) as info:
        device.backend()
    assert GPU_WHY in str(info.value)
    with pytest.raises(RuntimeError, match="GPU backend is not available"):
        device.get_xp("gpu")


def test_gpu_status_reason_is_a_sentence():
    ok, why = device.gpu_status()
    assert isinstance(ok, bool) and isinstance(why, str) and why


def test_get_xp_rejects_unknown_backend():
    with pytest.raises(ValueError, match="'gpu' or 'cpu'"):
        device.get_xp("tpu")


# --- describe() -----------------------------------------------------------------------------

def test_describe_cpu_requested(monkeypatch):
    monkeypatch.setenv("MOE_TUTORIAL_DEVICE", "cpu")
    text = mt.describe()
    first = text.splitlines()[0]
    assert first == "backend: CPU emulator (why: MOE_TUTORIAL_DEVICE=cpu)"
    import cuda.tile as ct
    assert f"cuda-tile {ct.__version__}" in text
    assert "tileiras:" in text


def test_describe_without_gpu_gives_the_reason(monkeypatch, no_gpu):
    monkeypatch.setenv("MOE_TUTORIAL_DEVICE", "auto")
    assert mt.describe().splitlines()[0] == "backend: CPU emulator (why: pretend: no GPU here)"


@pytest.mark.gpu
def test_describe_on_gpu_names_the_device(monkeypatch):
    monkeypatch.setenv("MOE_TUTORIAL_DEVICE", "gpu")
    first = mt.describe().splitlines()[0]
    assert first.startswith("backend: GPU — ") and "compute capability" in first


# --- array helpers --------------------------------------------------------------------------

def test_to_numpy_numpy_and_scalars():
    a = np.arange(6.0).reshape(2, 3)
    assert device.to_numpy(a) is a
    assert device.to_numpy(3.5) == np.float64(3.5)
    np.testing.assert_array_equal(device.to_numpy([1, 2]), np.array([1, 2]))


def test_array_module_numpy():
    assert device.array_module(np.zeros(2), np.ones(3)) is np
    assert device.array_module() is np
    assert device.array_module(1.0, "text") is np
    assert not device.is_gpu_array(np.zeros(2))


@pytest.mark.gpu
def test_gpu_arrays_helpers():
    import cupy as cp
    a = cp.arange(5, dtype=cp.float32)
    assert device.is_gpu_array(a)
    assert device.array_module(np.zeros(1), a) is cp
    host = device.to_numpy(a)
    assert isinstance(host, np.ndarray)
    np.testing.assert_array_equal(host, np.arange(5, dtype=np.float32))


# --- launch routing -------------------------------------------------------------------------

def test_launch_numpy_goes_to_the_emulator(monkeypatch):
    calls = []
    monkeypatch.setattr(mt.emulator, "launch", lambda *a: calls.append(a))
    a = np.zeros(4)
    kernel = object()
    device.launch([np.int64(2), np.int32(1)], kernel, [a, 3])   # NumPy ints are ints
    assert len(calls) == 1
    stream, grid, k, args = calls[0]
    assert stream is None and grid == (2, 1) and k is kernel
    assert args[0] is a and args[1] == 3 and isinstance(args, tuple)


@pytest.mark.gpu
def test_launch_refuses_mixed_numpy_and_cupy():
    import cupy as cp
    with pytest.raises(TypeError, match="same device"):
        device.launch((1,), mt.vector_add_kernel,
                      (np.zeros(4, np.float32), cp.zeros(4, cp.float32),
                       cp.zeros(4, cp.float32), 4))
    with pytest.raises(TypeError, match="same device"):  # arrays nested in a tuple count too
        device.launch((1,), mt.vector_add_kernel,
                      ((cp.zeros(4, cp.float32),), np.zeros(4, np.float32)))


def test_gpu_status_names_a_missing_driver(monkeypatch):
    """Without an NVIDIA driver the reason says so (not CUDA's "driver version is insufficient")."""
    class FakeCuPy:
        class cuda:
            class runtime:
                @staticmethod
                def getDeviceCount():
                    raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is "
                                       "insufficient for CUDA runtime version")

    monkeypatch.setattr(device, "_cupy", lambda: FakeCuPy)
    for driver, expected in ((None, "no NVIDIA driver on this machine"),
                             (12040, "the NVIDIA driver supports CUDA 12.4; cuTile needs CUDA 13")):
        monkeypatch.setattr(device, "_driver_version", lambda d=driver: d)
        device.gpu_status.cache_clear()
        try:
            ok, why = device.gpu_status()
        finally:
            device.gpu_status.cache_clear()
        assert not ok and why.startswith(expected), why
