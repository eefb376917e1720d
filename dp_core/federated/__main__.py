"""Command line for one federated run: ``python -m dp_core.federated --dataset digits --clients 2``.

Prints, after every round, the global model's test accuracy and every client's ε (with its δ
and accountant). Flags for the clients' local training are those of ``python -m dp_core.train``
(same spellings and aliases, e.g. ``--sigma`` for ``--noise-multiplier``), minus ``--epochs``:
clients train ``--local-epochs`` per round for ``--rounds`` rounds. Clients run in this process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys

from dp_core import config as config_module
from dp_core.accounting import PrivacySpent
from dp_core.cli import add_train_flags, settings_from_args, settings_parser
from dp_core.config import ConfigError, TrainConfig
from dp_core.federated._config import FEDERATED_KEYS, FederatedConfig, split_flat
from dp_core.federated._server import RoundReport, train_federated
from dp_core.train import TrainingDiverged

__all__ = ["build_parser", "configs_from_args", "main"]

_FEDERATED_HELP = {
    "clients": "number of clients, each with a disjoint shard of the training set",
    "rounds": "FedAvg rounds: clients train, the server averages their models",
    "local_epochs": "epochs of local DP-SGD per client per round",
    "partition": "iid (uniform shards) or dirichlet (label-skewed shards)",
    "dirichlet_alpha": "Dirichlet concentration for --partition dirichlet (small: few classes per client)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = settings_parser(
        prog="python -m dp_core.federated",
        metrics="every round's report as",
        description="FedAvg with DP-SGD clients (Opacus): per-round global accuracy and each client's ε.",
    )
    defaults = FederatedConfig().to_dict()
    for field in dataclasses.fields(FederatedConfig):
        kind = (
            int
            if field.name in ("clients", "rounds", "local_epochs")
            else (float if field.name == "dirichlet_alpha" else str)
        )
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            dest=field.name,
            type=kind,
            default=None,
            help=f"{_FEDERATED_HELP[field.name]} (default: {defaults[field.name]})",
        )
    add_train_flags(parser, exclude=("epochs",))  # clients train --local-epochs per round
    return parser


def configs_from_args(args: argparse.Namespace) -> tuple[TrainConfig, FederatedConfig]:
    """The clients' ``TrainConfig`` and the ``FederatedConfig`` of ``--config``'s file and the flags."""
    values, where = settings_from_args(args, (*FEDERATED_KEYS, *config_module.known_keys()))
    # A flag for one of two alternatives replaces the other one's value from the file.
    for given, other in (("sample_rate", "batch_size"), ("noise_multiplier", "target_epsilon")):
        if getattr(args, given, None) is not None and getattr(args, other, None) is None:
            values.pop(other, None)
        if getattr(args, other, None) is not None and getattr(args, given, None) is None:
            values.pop(given, None)
    if "sample_rate" in values and "batch_size" not in values:
        values["batch_size"] = None
    return split_flat(values, where=where)


def _print_round(report: RoundReport, *, rounds: int) -> None:
    print(
        f"round {report.round}/{rounds}: global test accuracy {report.test_accuracy:.4f} "
        f"(test loss {report.test_loss:.4f})",
        flush=True,
    )
    for client, epsilon in enumerate(report.client_epsilons):
        spent = PrivacySpent(epsilon=epsilon, delta=report.delta, accountant=report.accountant)
        print(f"  client {client}: {spent}, {report.client_steps[client]} steps", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config, federated = configs_from_args(args)
        result = train_federated(
            config, federated, on_round=lambda report: _print_round(report, rounds=federated.rounds)
        )
    except (ConfigError, TrainingDiverged) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    plan, final = result.plan, result.final
    shards = ", ".join(f"client {c.client}: n = {c.shard_size}, q = {c.sample_rate:.4g}" for c in plan.clients)
    print(f"shards ({federated.partition}): {shards}")
    if plan.private and math.isfinite(final.epsilon):
        print(
            f"run: {plan.spent(final.epsilon)} = max over clients, σ = {plan.noise_multiplier:.4g}, "
            f"C = {config.privacy.max_grad_norm:g}; test accuracy {final.test_accuracy:.4f} after "
            f"{final.round} rounds" + (" (stopped by the ε budget)" if result.stopped_early else "")
        )
    else:
        print(f"run: no privacy (ε = ∞); test accuracy {final.test_accuracy:.4f} after {final.round} rounds")
    if args.metrics_json is not None:
        args.metrics_json.write_text(
            json.dumps(
                {
                    "config": result.config.to_dict(),
                    "federated": federated.to_dict(),
                    "rounds": [
                        {
                            **r.to_dict(),
                            "epsilon": r.epsilon if math.isfinite(r.epsilon) else None,
                            "client_epsilons": [e if math.isfinite(e) else None for e in r.client_epsilons],
                        }
                        for r in result.reports
                    ],
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
