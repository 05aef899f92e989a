"""From the scene's true attenuation to what a scanner measures.

The steps follow the physics of a linac and a scintillator column:

1. expected quanta ``I0 exp(-A)`` per pixel and channel;
2. photon statistics: Poisson, drawn exactly where few quanta arrive (behind
   dense cargo, where it matters) and as a Gaussian with the same variance
   elsewhere (identical at large counts and an order of magnitude faster);
   plus the electronics' read noise;
3. scintillator cross-talk and focal-spot/motion blur (a Gaussian PSF) on the
   *intensity*, which also correlates the noise between neighbours as in a
   real detector;
4. per-row detector gain and per-column linac dose; calibration divides by
   estimates of both, and the error of those estimates is what shows as
   horizontal and vertical streaks;
5. a floor: below ``count_floor`` nothing is distinguishable from dark noise,
   so the pixel saturates at ``ln(i0 / count_floor)``;
6. ``A = -ln(I / (I0 * gain_estimate))``.

Dense cargo therefore comes out both darker and noisier, and impenetrable
regions are flat at the site's saturation level, as in real scans.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from scanml.synth.profiles import ScannerProfile

__all__ = ["measure", "saturation_level"]

# Below this many expected quanta the Gaussian approximation of Poisson
# noise is visibly wrong (skewed, discrete), so those pixels are drawn exactly.
_EXACT_POISSON_BELOW = 40.0


def measure(
    attenuation: np.ndarray,
    profile: ScannerProfile,
    i0: tuple[float, ...],
    rng: np.random.Generator,
) -> np.ndarray:
    """Measured log-attenuation float32 ``[C, H, W]`` of a noise-free ``[C, H, W]`` scene.

    ``i0`` holds one unattenuated count per channel (a site's flux, which
    the caller may vary a little from scan to scan, as a linac's output
    drifts).
    """
    n_rows, n_cols = attenuation.shape[1:]
    # The rows' gains are a property of the detector, shared by both energies.
    row_gain = rng.normal(1.0, profile.gain_sigma, n_rows).astype(np.float32)
    row_gain_estimate = row_gain * (1.0 + rng.normal(0.0, profile.gain_residual, n_rows)).astype(
        np.float32
    )
    measured = np.empty_like(attenuation, dtype=np.float32)
    for channel, flux in enumerate(i0):
        dose = rng.normal(1.0, profile.dose_residual * 4.0, n_cols).astype(np.float32)
        dose_estimate = dose * (1.0 + rng.normal(0.0, profile.dose_residual, n_cols)).astype(
            np.float32
        )
        expected = flux * np.exp(-attenuation[channel]) * dose[None, :]
        counts = _photon_counts(expected, profile.read_noise, rng)
        counts = ndimage.gaussian_filter(counts, profile.blur_px, mode="nearest", truncate=3.0)
        counts *= row_gain[:, None]
        counts = np.maximum(counts, profile.count_floor)
        reference = flux * row_gain_estimate[:, None] * dose_estimate[None, :]
        measured[channel] = np.log(reference / counts)
    return np.minimum(measured, saturation_level(profile, i0)[:, None, None])


def saturation_level(profile: ScannerProfile, i0: tuple[float, ...]) -> np.ndarray:
    """The attenuation at which each channel is blind: ``ln(i0 / count_floor)``."""
    return np.log(np.asarray(i0, np.float32) / profile.count_floor)


def _photon_counts(expected: np.ndarray, read_noise: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts of mean ``expected`` plus Gaussian read noise (float32)."""
    sigma = np.sqrt(expected + read_noise**2)
    counts = expected + sigma * rng.standard_normal(expected.shape, dtype=np.float32)
    few = expected < _EXACT_POISSON_BELOW
    if few.any():
        exact = rng.poisson(expected[few]).astype(np.float32)
        counts[few] = exact + read_noise * rng.standard_normal(exact.shape, dtype=np.float32)
    return counts
