"""Quality on real imagery: classical baselines and the evaluation report."""
