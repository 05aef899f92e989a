"""Reading and writing scan files: DICOM/DICOS, 16-bit TIFF and PNG, ``.npy``.

Every reader returns a :class:`Scan` in log-attenuation on the file's own
pixel grid and raises only :class:`ScanReadError`; see
:mod:`scanml.io.dicom` for how DICOM pixel values are interpreted.
"""

from scanml.io.dicom import ScanAssumptionWarning
from scanml.io.dicos import high_energy_file, is_energy_partner
from scanml.io.errors import ScanReadError
from scanml.io.files import DEFAULT_MAX_BYTES, SUPPORTED_SUFFIXES, read_scan, write_scan
from scanml.io.scan import Scan

__all__ = [
    "DEFAULT_MAX_BYTES",
    "SUPPORTED_SUFFIXES",
    "Scan",
    "ScanAssumptionWarning",
    "ScanReadError",
    "high_energy_file",
    "is_energy_partner",
    "read_scan",
    "write_scan",
]
