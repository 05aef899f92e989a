"""Materials and X-ray attenuation at container-scanner energies.

A container scanner measures transmission T = I / I0 along each ray. By
Beer-Lambert the log-attenuation is additive over the materials a ray
crosses::

    A = -ln T = sum_m  mu_m(E) * rho_m * t_m

with ``mu_m(E)`` the mass attenuation coefficient (cm2/g), ``rho_m`` the
density (g/cm3) and ``t_m`` the path length (cm). scanml works in ``A``
everywhere, because objects then *add*: that is what makes simulated scenes
and threat image projection physically right.

The linac's bremsstrahlung is a spectrum, not a line. After the container
walls have hardened it, a 6 MeV endpoint beam behaves like a line at roughly
3 MeV and a 4 MeV endpoint beam like one at roughly 1.5 MeV; the table holds
``mu`` at those two *effective energies*. At 3 MeV pair production (which
grows with Z^2) has started to matter while at 1.5 MeV Compton scattering
(which follows the electron density, about the same per gram for every
element but hydrogen) dominates. Hence the low/high ratio is larger for
organics (~1.45) than for iron (~1.35) or lead (~1.23): that ratio is what
separates organic cargo from metal on a dual-energy scanner. (At 2 MeV the
iron and water ratios would cross over, which is why the high effective
energy is taken at 3 MeV rather than lower.)

Coefficients are NIST XCOM totals (coherent scattering included) for the
elements, mixed by mass fraction for compounds; a few minor elements are
interpolated with the Compton-plus-pair scaling of their neighbours. They
are accurate to a few per cent, which is far below the spread between
scanners that the simulator randomises anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "ATTENUATION_SCALE",
    "EFFECTIVE_ENERGY_MEV",
    "MATERIALS",
    "Energy",
    "Material",
    "attenuation_of",
]

Energy = Literal["high", "low"]

# The model sees clip(A / ATTENUATION_SCALE, 0, 1). The constant is physical
# and fixed, never a per-image min/max that would erase the density
# differences between scans. A 16-bit LIN scan cannot represent a
# transmission below 1/65535, i.e. an attenuation above -ln(1/65535) = 11.09,
# and real scanners saturate ("impenetrable") a little below that; 12.0 keeps
# every measurable attenuation inside [0, 1] with a little headroom and
# leaves the saturated level distinguishable from 1.0.
ATTENUATION_SCALE = 12.0

# Effective photon energies (MeV) of the two beams; see the module docstring.
EFFECTIVE_ENERGY_MEV: Mapping[Energy, float] = {"high": 3.0, "low": 1.5}


@dataclass(frozen=True)
class Material:
    """A material with its attenuation at the two effective energies.

    ``density`` is the bulk density in g/cm3 as it sits in a container: for
    produce, tobacco or textiles that includes the air between the items,
    because that is what a ray averages over.
    """

    name: str
    density: float
    mu_high: float
    mu_low: float

    def mu(self, energy: Energy) -> float:
        """Mass attenuation coefficient (cm2/g) at ``energy``."""
        return self.mu_high if energy == "high" else self.mu_low

    def linear_mu(self, energy: Energy) -> float:
        """Linear attenuation coefficient (1/cm) at the bulk density."""
        return self.mu(energy) * self.density


def attenuation_of(
    material: Material | str,
    thickness_cm: float | np.ndarray,
    energy: Energy = "high",
    *,
    density: float | None = None,
) -> float | np.ndarray:
    """Log-attenuation ``mu(E) * rho * t`` of ``thickness_cm`` of a material.

    ``density`` overrides the table's bulk density (a loosely packed load, a
    compressed brick). Works element-wise on arrays of thicknesses; sum the
    results of several materials to get the attenuation of a ray.
    """
    if isinstance(material, str):
        material = MATERIALS[material]
    rho = material.density if density is None else density
    value = material.mu(energy) * rho * np.asarray(thickness_cm, dtype=np.float64)
    return value if value.ndim else float(value)


# (mu at 3 MeV, mu at 1.5 MeV) in cm2/g, NIST XCOM with coherent scattering.
_ELEMENT_MU: Mapping[str, tuple[float, float]] = {
    "H": (0.06921, 0.1027),
    "C": (0.03562, 0.05179),
    "N": (0.03561, 0.05177),
    "O": (0.03578, 0.05177),
    "Na": (0.03473, 0.04954),
    "Mg": (0.03576, 0.05065),
    "Al": (0.03541, 0.05006),
    "Si": (0.03653, 0.05129),
    "S": (0.03708, 0.05167),
    "Cl": (0.03580, 0.04965),
    "K": (0.03662, 0.05030),
    "Ca": (0.03778, 0.05170),
    "Fe": (0.03621, 0.04883),
    "Cu": (0.03599, 0.04803),
    "Zn": (0.03627, 0.04817),
    "Pb": (0.04234, 0.05222),
}

# Cellulose (C6H10O5) stands for wood, paper, cardboard and cotton.
_CELLULOSE = {"H": 0.062, "C": 0.444, "O": 0.494}
_WATER = {"H": 0.1119, "O": 0.8881}


def _mixture(name: str, density: float, mass_fractions: Mapping[str, float]) -> Material:
    """A compound or mixture from the mass fractions of its elements or sub-mixtures."""
    total = sum(mass_fractions.values())
    mu_high = sum(w * _ELEMENT_MU[el][0] for el, w in mass_fractions.items()) / total
    mu_low = sum(w * _ELEMENT_MU[el][1] for el, w in mass_fractions.items()) / total
    return Material(name, density, round(mu_high, 5), round(mu_low, 5))


def _blend(*parts: tuple[Mapping[str, float], float]) -> dict[str, float]:
    """Mass-weighted blend of element compositions, e.g. 85 % water + 15 % cellulose."""
    out: dict[str, float] = {}
    for composition, weight in parts:
        for element, fraction in composition.items():
            out[element] = out.get(element, 0.0) + weight * fraction
    return out


MATERIALS: Mapping[str, Material] = {
    m.name: m
    for m in (
        _mixture("air", 0.001205, {"N": 0.755, "O": 0.245}),
        _mixture("steel", 7.85, {"Fe": 0.99, "C": 0.01}),
        _mixture("aluminium", 2.70, {"Al": 1.0}),
        _mixture("copper", 8.96, {"Cu": 1.0}),
        _mixture("lead", 11.35, {"Pb": 1.0}),
        _mixture("wood", 0.60, {"H": 0.060, "C": 0.495, "O": 0.445}),
        # Paper in reams and books, and the walls of corrugated board at the
        # effective density of board (liner plus flute plus air).
        _mixture("paper", 0.80, _CELLULOSE),
        _mixture("cardboard", 0.15, _CELLULOSE),
        _mixture("plastic", 0.94, {"H": 0.1437, "C": 0.8563}),
        _mixture("water", 1.00, _WATER),
        _mixture("diesel", 0.84, {"H": 0.135, "C": 0.865}),
        # Fruit and vegetables: mostly water, packed with air between them.
        _mixture("produce", 0.55, _blend((_WATER, 0.85), (_CELLULOSE, 0.15))),
        # Starchy bulk goods: rice, grain, flour.
        _mixture("grain", 0.75, _blend((_CELLULOSE, 0.88), (_WATER, 0.12))),
        # Cocaine hydrochloride-like organic powder pressed into bricks.
        _mixture("cocaine", 1.10, {"H": 0.066, "C": 0.601, "N": 0.041, "O": 0.188, "Cl": 0.104}),
        # Cigarettes in master cases: dried leaf, paper and filters, much air.
        _mixture("tobacco", 0.25, {"H": 0.065, "C": 0.43, "N": 0.02, "O": 0.455, "K": 0.03}),
        _mixture("rubber", 1.15, {"H": 0.095, "C": 0.855, "S": 0.02, "Zn": 0.01, "O": 0.02}),
        _mixture(
            "glass",
            2.50,
            {"O": 0.46, "Si": 0.336, "Na": 0.096, "Ca": 0.086, "Mg": 0.012, "Al": 0.01},
        ),
        _mixture(
            "concrete",
            2.30,
            {
                "H": 0.010,
                "C": 0.001,
                "O": 0.529,
                "Na": 0.016,
                "Mg": 0.002,
                "Al": 0.034,
                "Si": 0.337,
                "K": 0.013,
                "Ca": 0.044,
                "Fe": 0.014,
            },
        ),
        # Ceramic tiles and sanitary ware: stone-like, a little less dense.
        _mixture("ceramic", 2.00, {"O": 0.50, "Si": 0.30, "Al": 0.12, "Ca": 0.05, "Fe": 0.03}),
        # Cotton and synthetic fabric rolled or baled.
        _mixture("textile", 0.35, _blend((_CELLULOSE, 0.7), ({"H": 0.1437, "C": 0.8563}, 0.3))),
        # Polyurethane insulation foam in reefer walls.
        _mixture("foam", 0.04, {"H": 0.07, "C": 0.63, "N": 0.08, "O": 0.22}),
    )
}
