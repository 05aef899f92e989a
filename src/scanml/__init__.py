"""scanml: deep-learning anomaly detection in X-ray scans of shipping containers.

The package imports nothing heavy at import time; each step of the data flow
lives in its own module (see docs/ARCHITECTURE.md):

- :mod:`scanml.io` reads and writes scan files (DICOM/DICOS, TIFF, PNG, .npy);
- :mod:`scanml.synth` simulates container scans with ground truth;
- :mod:`scanml.train` trains a model and tracks it in MLflow;
- :mod:`scanml.scoring` batch-scores new scans.
"""

__version__ = "0.1.0"
