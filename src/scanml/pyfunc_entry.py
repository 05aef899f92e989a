"""The file MLflow logs as the model's code ("models from code").

MLflow executes this file when it loads a scanml model, so the model is
rebuilt from code plus a weights folder and nothing is unpickled. It is not
imported by the package itself. (Models logged before scanml.pyfunc existed
carry a copy that imports ``ScanmlPyfunc`` from ``scanml.tracking``, which
still resolves it.)
"""

from mlflow.models import set_model

from scanml.pyfunc import ScanmlPyfunc

set_model(ScanmlPyfunc())
