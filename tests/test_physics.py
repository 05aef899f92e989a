"""Beer-Lambert and the material table: the physics the simulator and TIP rely on."""

from __future__ import annotations

import numpy as np
import pytest

from scanml.physics import ATTENUATION_SCALE, MATERIALS, Material, attenuation_of

ORGANICS = (
    "water",
    "plastic",
    "paper",
    "wood",
    "produce",
    "cocaine",
    "tobacco",
    "textile",
    "rubber",
)
METALS = ("steel", "copper", "lead")


@pytest.mark.parametrize("name", sorted(MATERIALS))
def test_more_material_attenuates_more(name: str) -> None:
    thickness = np.array([0.0, 1.0, 5.0, 20.0, 100.0])
    for energy in ("high", "low"):
        values = attenuation_of(name, thickness, energy)
        assert values[0] == 0.0
        assert np.all(np.diff(values) > 0)


def test_attenuation_is_additive_along_a_ray() -> None:
    steel, water = MATERIALS["steel"], MATERIALS["water"]
    for energy in ("high", "low"):
        split = attenuation_of(steel, 3.0, energy) + attenuation_of(steel, 4.5, energy)
        assert attenuation_of(steel, 7.5, energy) == pytest.approx(split)
        # Transmissions multiply, so attenuations of different materials add.
        both = attenuation_of(steel, 2.0, energy) + attenuation_of(water, 50.0, energy)
        transmission = np.exp(-attenuation_of(steel, 2.0, energy)) * np.exp(
            -attenuation_of(water, 50.0, energy)
        )
        assert -np.log(transmission) == pytest.approx(both)


def test_dual_energy_ratio_separates_organic_from_metal() -> None:
    def ratio(name: str) -> float:
        return attenuation_of(name, 10.0, "low") / attenuation_of(name, 10.0, "high")

    lowest_organic = min(ratio(name) for name in ORGANICS)
    highest_metal = max(ratio(name) for name in METALS)
    assert lowest_organic > highest_metal + 0.05
    # And the ratio falls with atomic number among the metals.
    assert ratio("steel") > ratio("lead")


def test_coefficients_are_xcom_like() -> None:
    water, steel = MATERIALS["water"], MATERIALS["steel"]
    assert water.mu_high == pytest.approx(0.0397, rel=0.03)  # XCOM, 3 MeV
    assert water.mu_low == pytest.approx(0.0575, rel=0.03)  # XCOM, 1.5 MeV
    assert steel.mu_high == pytest.approx(0.0362, rel=0.03)
    # 30 cm of steel: about the penetration limit of a 6 MeV scanner.
    assert 7.0 < attenuation_of(steel, 30.0) < 10.0
    assert MATERIALS["tobacco"].density < 0.35 < MATERIALS["cocaine"].density


def test_density_override_and_bulk_goods() -> None:
    produce = MATERIALS["produce"]
    assert isinstance(produce, Material)
    assert attenuation_of(produce, 10.0, density=1.0) == pytest.approx(
        attenuation_of("water", 10.0), rel=0.02
    )


def test_attenuation_scale_covers_what_16_bit_lin_can_hold() -> None:
    assert -np.log(1.0 / 65535.0) < ATTENUATION_SCALE
    assert ATTENUATION_SCALE == 12.0
