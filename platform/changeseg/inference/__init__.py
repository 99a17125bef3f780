from changeseg.inference.predictor import Predictor, resolve_model_dir

__all__ = ["Predictor", "resolve_model_dir"]
