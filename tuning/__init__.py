"""The Ray Tune + Optuna + MLflow search over DERD's loss weights."""
