"""The MLflow pyfunc flavour of a changeseg model, logged as code.

MLflow runs this file to load the model (models from code), so nothing is unpickled:
weights come from the ``checkpoint`` artifact (safetensors + JSON). Input: ``t0`` and
``t1`` float32 arrays (N, 3, H, W) in [0, 1]; output: change probabilities (N, C, H, W).
"""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

from changeseg.inference.predictor import Predictor


class ChangesegPyfunc(PythonModel):
    def load_context(self, context) -> None:
        # The inference core; fp32 so the answer matches the logged model on any device.
        self.predictor = Predictor.from_dir(context.artifacts["checkpoint"], device="auto", precision="fp32")
        self.model, self.metadata = self.predictor.model, self.predictor.info.get("metadata", {})

    def predict(self, context, model_input, params=None) -> np.ndarray:
        return self.predictor.proba_from_tensors(model_input["t0"], model_input["t1"])


mlflow.models.set_model(ChangesegPyfunc())
