"""prepare(): channels by name, physically exact resampling, fixed scaling; box moves."""

from __future__ import annotations

import numpy as np
import pytest

from scanml.io import Scan
from scanml.physics import ATTENUATION_SCALE
from scanml.preprocess import Preprocessing, model_grid_shape, prepare, scale_box

SINGLE = Preprocessing(channels=("high",), spacing_mm=8.0)
DUAL = Preprocessing(channels=("high", "low"), spacing_mm=8.0)


def _scan(attenuation: np.ndarray, spacing_mm=(8.0, 8.0), channels=("high",)) -> Scan:
    return Scan(
        attenuation=attenuation.astype(np.float32),
        spacing_mm=spacing_mm,
        channels=list(channels),
        meta={"scan_id": "scan-42"},
    )


def test_single_energy_model_reads_the_high_channel_of_a_dual_energy_scan() -> None:
    high, low = np.full((1, 16, 24), 3.0), np.full((1, 16, 24), 6.0)
    scan = _scan(np.concatenate([low, high]), channels=("low", "high"))

    image = prepare(scan, SINGLE)

    assert image.shape == (1, 16, 24)
    np.testing.assert_allclose(image, 3.0 / ATTENUATION_SCALE)
    # A dual-energy model gets the channels in its own order, whatever the file's.
    np.testing.assert_allclose(prepare(scan, DUAL)[:, 0, 0], [3.0 / 12.0, 6.0 / 12.0])


def test_dual_energy_model_refuses_a_single_energy_scan_by_name() -> None:
    scan = _scan(np.ones((1, 16, 24)))

    with pytest.raises(ValueError, match=r"scan-42.*\['high'\].*\['high', 'low'\].*dual-energy"):
        prepare(scan, DUAL)


def test_scaling_is_a_fixed_physical_constant_not_per_image() -> None:
    light, dense = np.full((1, 8, 8), 1.5), np.full((1, 8, 8), 6.0)
    dense[0, 0, 0], dense[0, 0, 1] = 30.0, -0.5  # beyond saturation, and noise below air

    light_image, dense_image = prepare(_scan(light), SINGLE), prepare(_scan(dense), SINGLE)

    assert light_image[0, 4, 4] == pytest.approx(1.5 / 12.0)
    assert dense_image[0, 4, 4] == pytest.approx(6.0 / 12.0)  # still 4x the light scan
    assert dense_image[0, 0, 0] == 1.0 and dense_image[0, 0, 1] == 0.0
    assert dense_image.dtype == np.float32


def test_prepare_does_not_modify_the_scan() -> None:
    scan = _scan(np.full((1, 8, 8), 6.0))

    prepare(scan, SINGLE)

    assert np.all(scan.attenuation == 6.0)


def test_resampling_keeps_mean_attenuation_physical_size_and_position() -> None:
    # 5 mm rows, 4 mm columns; a 1000 mm long, 600 mm high object.
    spacing = (5.0, 4.0)
    attenuation = np.zeros((1, 400, 900), dtype=np.float32)
    top, left = 100, 200
    attenuation[0, top : top + 120, left : left + 250] = 4.0
    scan = _scan(attenuation, spacing)

    image = prepare(scan, SINGLE) * ATTENUATION_SCALE

    assert image.shape[1:] == model_grid_shape((400, 900), spacing, SINGLE) == (250, 450)
    # Mass (attenuation x area) is preserved: mean attenuation per mm2.
    assert image.sum() * 8.0 * 8.0 == pytest.approx(attenuation.sum() * 5.0 * 4.0, rel=1e-4)
    # The object is still 1000 x 600 mm (width at half height) and in the same place.
    middle_row = image[0, round((top + 60) * 5 / 8)]
    middle_col = image[0, :, round((left + 125) * 4 / 8)]
    assert (middle_row > 2.0).sum() * 8.0 == pytest.approx(1000.0, abs=8.0)
    assert (middle_col > 2.0).sum() * 8.0 == pytest.approx(600.0, abs=8.0)
    rows, cols = np.nonzero(image[0] > 2.0)
    assert (cols.min() * 8.0, rows.min() * 8.0) == pytest.approx((left * 4.0, top * 5.0), abs=8.0)


@pytest.mark.parametrize("spacing", [(4.8, 4.8), (5.3, 2.7), (11.0, 9.5), (8.0, 8.0)])
def test_grid_shape_matches_prepare_for_awkward_spacings(spacing: tuple[float, float]) -> None:
    scan = _scan(np.ones((1, 333, 517)), spacing)

    assert prepare(scan, SINGLE).shape[1:] == model_grid_shape((333, 517), spacing, SINGLE)


def test_scale_box_moves_between_grids_and_back() -> None:
    scan_spacing, model_spacing = (5.0, 4.0), (8.0, 8.0)
    box = (200.0, 100.0, 250.0, 120.0)  # x, y, w, h in scan pixels

    on_model = scale_box(box, scan_spacing, model_spacing)

    assert on_model == pytest.approx((100.0, 62.5, 125.0, 75.0))  # 1000 x 600 mm, same place
    assert scale_box(on_model, model_spacing, scan_spacing) == pytest.approx(box)


def test_preprocessing_round_trips_through_a_dict_and_validates() -> None:
    pre = Preprocessing(channels=["high", "low"], spacing_mm=6.0, attenuation_scale=10.0)

    assert pre.channels == ("high", "low")
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    assert Preprocessing.from_dict({"channels": ["high"], "spacing_mm": 8}) == SINGLE
    with pytest.raises(ValueError, match="distinct"):
        Preprocessing(channels=("high", "high"), spacing_mm=8.0)
    with pytest.raises(ValueError, match="spacing_mm"):
        Preprocessing(channels=("high",), spacing_mm=0.0)
