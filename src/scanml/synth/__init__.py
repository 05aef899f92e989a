"""The container-scan simulator: physically grounded scans with ground truth.

No public cargo X-ray dataset exists, so scanml learns from simulated scans
that must be close enough to real ones for what is learnt to carry over to
other simulators and other DICOM producers. See :func:`simulate_scan` for one
scan, :func:`generate_dataset` for a dataset on disk, :data:`SCANNER_PROFILES`
for the sites, and :func:`brick_stack_attenuation` for threat projection.
"""

from scanml.synth.concealment import CATEGORIES, Annotation, brick_stack_attenuation
from scanml.synth.dataset import SynthSummary, generate_dataset
from scanml.synth.profiles import SCANNER_PROFILES, ScannerProfile
from scanml.synth.simulate import simulate_scan

__all__ = [
    "CATEGORIES",
    "SCANNER_PROFILES",
    "Annotation",
    "ScannerProfile",
    "SynthSummary",
    "brick_stack_attenuation",
    "generate_dataset",
    "simulate_scan",
]
