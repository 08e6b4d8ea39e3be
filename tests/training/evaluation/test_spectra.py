import numpy as np
import pytest
import torch

from training.evaluation.spectra import SpectrumAccumulator, radial_power_spectrum


def _wave(fy: int, fx: int, size: int = 32) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.cos(2 * torch.pi * (fy * y + fx * x) / size).to(torch.float32)


@pytest.mark.parametrize(("fy", "fx", "radius"), [(0, 5, 5), (7, 0, 7), (3, 4, 5), (0, 16, 16)])
def test_sinusoid_peaks_at_its_frequency(fy, fx, radius):
    img = _wave(fy, fx)[None, None]
    s = radial_power_spectrum(img)
    assert len(s) == 17  # radii 0..16 for 32x32
    assert int(np.argmax(s)) == radius


def test_dc_is_removed_and_channels_are_averaged():
    img = torch.stack([_wave(0, 4) + 0.7, _wave(0, 4) - 0.2, _wave(0, 4)])[None]
    s = radial_power_spectrum(img)
    assert s[0] == pytest.approx(0.0, abs=1e-12)
    assert int(np.argmax(s)) == 4


def test_white_noise_is_flat():
    s = radial_power_spectrum(torch.randn(256, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    # The power of unit white noise is 1 at every frequency (up to sampling noise).
    assert np.allclose(s[1:], 1.0, atol=0.1)


def test_accumulator_equals_batch_mean():
    x = torch.randn(10, 1, 16, 16)
    acc = SpectrumAccumulator()
    acc.update(x[:3])
    acc.update(x[3:])
    assert np.allclose(acc.mean(), radial_power_spectrum(x))


def test_rejects_bad_shape():
    with pytest.raises(ValueError):
        radial_power_spectrum(torch.zeros(16, 16))
