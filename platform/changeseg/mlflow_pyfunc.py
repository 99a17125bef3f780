"""The MLflow pyfunc flavour of a changeseg model, logged as code.

MLflow runs this file to load the model (models from code), so nothing is unpickled:
weights come from the ``checkpoint`` artifact (safetensors + JSON). Input: ``t0`` and
``t1`` float32 arrays (N, 3, H, W) in [0, 1]; output: change probabilities (N, C, H, W).
"""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class ChangesegPyfunc(PythonModel):
    def load_context(self, context) -> None:
        from changeseg.models.weights import find_checkpoint_dir, load_checkpoint

        self.model, self.metadata = load_checkpoint(find_checkpoint_dir(context.artifacts["checkpoint"]))
        self.model.eval()

    def predict(self, context, model_input, params=None) -> np.ndarray:
        import torch

        t0 = torch.as_tensor(np.asarray(model_input["t0"], dtype=np.float32))
        t1 = torch.as_tensor(np.asarray(model_input["t1"], dtype=np.float32))
        with torch.inference_mode():
            return self.model(t0, t1).softmax(1).numpy()


mlflow.models.set_model(ChangesegPyfunc())
