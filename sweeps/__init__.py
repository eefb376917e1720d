"""dpsweep's sweeps: search spaces, Ray Tune orchestration, Optuna search, MLflow tracking."""
