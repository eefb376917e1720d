"""The sweep driver: the launcher's phases on Ray Tune, Optuna and MLflow.

In the order a sweep runs them: ``preparation`` (the request, the space, the secret and the grid
planned, before Ray or MLflow), ``session`` (the MLflow parent run and Ray), ``runner`` (Ray Tune,
the pruning board) with ``search``, ``optuna_actors`` and ``batch_tpe`` (Optuna),
``tracking_callback``, ``sweep_stats`` and ``progress``, then ``confirm_stage``, ``finish`` and
``register_models`` (each ε bound's model into MLflow's Model Registry).
Beside them: ``resources`` (whether trials fit the cluster), ``checkpoint_volume`` (what the
trials' checkpoints will write, said before the sweep starts), ``prepare_data`` (datasets fetched
once), ``user_code`` (a space's own modules: checked here, shipped to Ray's workers) and ``submit``
(a sweep as a Ray Job). It re-exports no names: ``python -m sweeps.submit``
imports this package and must start without torch, Ray, Optuna or MLflow.
"""

__all__ = [
    "batch_tpe",
    "checkpoint_volume",
    "confirm_stage",
    "finish",
    "optuna_actors",
    "prepare_data",
    "preparation",
    "progress",
    "register_models",
    "resources",
    "runner",
    "search",
    "session",
    "submit",
    "sweep_stats",
    "tracking_callback",
    "user_code",
]
