"""Train one configuration with DP-SGD: the loop every sweep trial runs.

``train(config, on_epoch=...)`` reads top to bottom: plan the privacy spend, load data, build
the model and optimizer, wrap them for DP-SGD, loop over epochs of Poisson-sampled batches,
evaluate, report. A sweep observes the run only through the ``on_epoch`` hook; raising
``StopTraining`` from the hook ends the run cleanly (pruning).

Run ``python -m dp_core.train --help`` for the command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dp_core.augment import augmentation_views
from dp_core.averaging import ParameterAverage
from dp_core.config import ConfigError, TrainConfig
from dp_core.data import DatasetSplits, load_data
from dp_core.dpsgd import PlainStep, make_private_step, poisson_batches
from dp_core.engines import require_channels_last
from dp_core.models import build_configured_model
from dp_core.precision import resolve_precision
from dp_core.privacy_plan import PrivacyPlan, check_plan, plan_privacy

__all__ = [
    "EpochReport",
    "epoch_report",
    "ProgressReport",
    "StopTraining",
    "TrainResult",
    "TrainingDiverged",
    "asks_to_stop",
    "build_optimizer",
    "evaluate",
    "evaluate_splits",
    "main",
    "resolve_device",
    "save_best_model",
    "train",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProgressReport:
    """What every report of a run's progress holds (an epoch's here, a federated round's in
    ``dp_core.federated``). ``epsilon`` is an upper bound from ``accountant`` at ``delta``.

    Validation and test loss and accuracy are measured on data never trained on; either is None
    where it was not measured (no validation split; test not asked for, as in a sweep's search,
    where no decision may read it). With parameter averaging (``ema_decay``) they are the averaged
    model's, the one a run selects on and releases, and ``*_accuracy_raw`` the last iterate's;
    without it the ``_raw`` fields are None.
    """

    # No training loss: the mean of unclipped per-example losses is an un-noised statistic of the
    # training data.
    val_loss: float | None = None
    val_accuracy: float | None = None
    test_loss: float | None = None
    test_accuracy: float | None = None
    val_accuracy_raw: float | None = None
    test_accuracy_raw: float | None = None
    epsilon: float
    delta: float
    accountant: str
    noise_multiplier: float
    train_seconds: float
    eval_seconds: float
    stopped_by_budget: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EpochReport(ProgressReport):
    """What one epoch produced: the ``ProgressReport`` after ``steps`` optimizer steps."""

    epoch: int
    steps: int


def epoch_report(
    plan: PrivacyPlan,
    *,
    epoch: int,
    steps: int,
    measured: dict[str, float],
    train_seconds: float,
    eval_seconds: float,
    stopped_by_budget: bool = False,
) -> EpochReport:
    """An epoch's report, its ε that of ``steps`` steps of ``plan`` (train() and each packed run alike)."""
    return EpochReport(
        epoch=epoch,
        steps=steps,
        **measured,
        epsilon=plan.epsilon_at(steps),
        delta=plan.delta,
        accountant=plan.accountant,
        noise_multiplier=plan.noise_multiplier,
        train_seconds=train_seconds,
        eval_seconds=eval_seconds,
        stopped_by_budget=stopped_by_budget,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainResult:
    config: TrainConfig
    plan: PrivacyPlan
    reports: tuple[EpochReport, ...]
    stopped_early: bool
    model: nn.Module

    @property
    def final(self) -> EpochReport:
        return self.reports[-1]


class StopTraining(Exception):
    """Raised by an ``on_epoch`` hook to end training after the current epoch (e.g. pruning)."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the run's results are meaningless.

    The message names the epoch and the hyperparameters, never the loss: it is logged (an MLflow
    tag), and the loss is an un-noised statistic of the training data.
    """


def asks_to_stop(hook: Callable[[Any], None] | None, report: ProgressReport) -> bool:
    """Pass ``report`` to ``hook`` (if any); whether it raised ``StopTraining`` to end the run there."""
    if hook is None:
        return False
    try:
        hook(report)
    except StopTraining:
        return True
    return False


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("Expected device to be available, but got device='cuda' on a machine without CUDA.")
    return torch.device(device)


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    opt = config.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    if opt.optimizer == "sgd":
        return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    if opt.optimizer == "adam":
        return torch.optim.Adam(params, lr=opt.lr, weight_decay=opt.weight_decay)
    return torch.optim.RMSprop(params, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)


def evaluate_splits(
    model: nn.Module, splits: dict[str, tuple[torch.Tensor, torch.Tensor] | None], *, batch_size: int
) -> dict[str, float]:
    """``{"<split>_loss": .., "<split>_accuracy": ..}`` for each split given (``None``: not measured, left out)."""
    measured: dict[str, float] = {}
    for split, tensors in splits.items():
        if tensors is not None:
            measured[f"{split}_loss"], measured[f"{split}_accuracy"] = evaluate(model, *tensors, batch_size=batch_size)
    return measured


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy, kept on the device until one sync at the end."""
    model.eval()
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    for start in range(0, len(images), batch_size):
        logits = model(images[start : start + batch_size])
        target = labels[start : start + batch_size]
        loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum")
        correct += (logits.argmax(dim=1) == target).sum()
    model.train()
    return loss_sum.item() / len(images), correct.item() / len(images)


def save_best_model(
    path: Path, model: nn.Module, report: EpochReport, *, input_shape: tuple[int, ...], num_classes: int
) -> None:
    """Save ``model``'s weights (on the CPU) at ``path`` with the epoch and validation accuracy they
    scored and the data's shape: ``{"state_dict", "epoch", "val_accuracy", "input_shape", "num_classes"}``."""
    weights = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
    _save_checkpoint(
        path,
        {
            "state_dict": weights,
            "epoch": report.epoch,
            "val_accuracy": report.val_accuracy,
            "input_shape": tuple(input_shape),
            "num_classes": num_classes,
        },
    )


def _same_config(saved: dict[str, Any], config: TrainConfig) -> bool:
    """Whether a checkpoint's flat config is ``config``'s, keys added since it was written taking their
    defaults (a checkpoint from before ``ema_decay`` existed trained without averaging)."""
    try:
        return TrainConfig.from_dict(saved).to_dict() == config.to_dict()
    except ConfigError:
        return False


def _memory_format(config: TrainConfig, input_shape: tuple[int, ...]) -> torch.memory_format:
    """``channels_last`` for a run that asks for it on images (C, H, W), else the default layout."""
    if not config.channels_last:
        return torch.preserve_format
    if len(input_shape) != 3:
        raise ConfigError(
            f"Expected channels_last only for image data (C, H, W), but got channels_last=True for inputs of "
            f"shape {tuple(input_shape)}; set channels_last: false."
        )
    return torch.channels_last


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    # Write then rename: a run killed mid-save leaves the previous checkpoint intact.
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(
    config: TrainConfig,
    *,
    on_epoch: Callable[[EpochReport], None] | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every_seconds: float = 0.0,
    data: DatasetSplits | None = None,
    plan: PrivacyPlan | None = None,
    evaluate_test: bool = True,
    best_model_path: str | os.PathLike | None = None,
) -> TrainResult:
    """Train ``config`` with DP-SGD and return every epoch's report.

    Plans the privacy spend (σ calibrated to ``target_epsilon`` if one is given), loads the data,
    builds the model and optimizer, wraps them for DP-SGD (``make_private_step``) and trains
    epochs of Poisson-sampled batches, evaluating after each.

    Args:
        config: the run; see ``TrainConfig`` (``TrainConfig.from_dict`` builds it from flat keys).
        on_epoch: called with every epoch's ``EpochReport``; raising ``StopTraining`` from it ends the
            run cleanly after that epoch (how a sweep prunes).
        checkpoint_path: with it, state is saved after every epoch and a matching checkpoint is
            resumed from, so a resumed run reaches the same steps, and so the same ε, as an
            uninterrupted one.
        checkpoint_every_seconds: save at most that often (and always after the last epoch): for
            epochs of milliseconds, saving every one would cost more than training.
        data: the splits, pre-loaded (warm sweep workers reuse them across trials); by default
            ``load_data(config.data)``.
        plan: the privacy plan, pre-computed (a sweep plans every trial before starting it); one
            that does not belong to this configuration is refused.
        evaluate_test: whether to evaluate on the test split too (a sweep's search does not: its
            decisions must not read test data). The validation split, if any, is always evaluated.
        best_model_path: with it (and a validation split), the model of the epoch of highest
            validation accuracy so far (the earliest of equals, restored epochs included) is saved
            there after that epoch, before ``on_epoch`` sees it (:func:`save_best_model`), and so is
            the checkpoint, so that the two agree; its weights are the run's, not retrained (with
            ``ema_decay``, the averaged weights, whose validation accuracy is the one compared).

    Returns:
        A ``TrainResult``: the configuration with σ resolved, the privacy plan, one report per epoch
        trained (each ε an upper bound from its accountant at δ), whether it stopped early, and the
        trained model (with ``ema_decay``, the average of its weights: :mod:`dp_core.averaging`).

    Raises:
        ConfigError: the configuration does not fit the data (δ >= 1/N, batch larger than N), no σ
            reaches the target ε, ``plan`` or the checkpoint belongs to another configuration, the
            device is not available, or the precision is not available on it (tf32 on a CPU).
        TrainingDiverged: the training loss became NaN or infinite.

    Example:
        >>> from dp_core.config import TrainConfig
        >>> config = TrainConfig.from_dict({"dataset": "digits", "model": "mlp", "epochs": 2, "batch_size": 256,
        ...                                 "lr": 2.0, "noise_multiplier": 1.0, "max_grad_norm": 0.5, "seed": 0})
        >>> result = train(config)
        >>> [report.epoch for report in result.reports], result.final.accountant, result.final.delta
        ([1, 2], 'prv', 1e-05)
        >>> 0 < result.reports[0].epsilon < result.final.epsilon < 5  # ε grows with the steps taken
        True
        >>> result.final.test_accuracy > 0.5
        True
    """
    privacy = config.privacy
    data = data if data is not None else load_data(config.data)
    train_size = len(data.train)
    if plan is None:
        plan = plan_privacy(config, train_size=train_size)
    else:
        check_plan(plan, config, train_size=train_size)
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)  # the steps' forward and backward only

    torch.manual_seed(config.seed)  # model init and dropout
    # Poisson masks are drawn on the device the data lives on (dp_core.dpsgd.poisson_batches).
    sampling_generator = torch.Generator(device=device).manual_seed(config.seed + 1)
    noise_generator = torch.Generator(device=device).manual_seed(config.seed + 2)
    augment_generator = torch.Generator(device=device).manual_seed(config.seed + 3)  # augmult's views

    layout = _memory_format(config, data.input_shape)
    train_images, train_labels = (t.to(device) for t in data.train.tensors)
    train_images = train_images.contiguous(memory_format=layout)  # batches indexed from it keep the layout
    eval_splits = {
        "val": tuple(t.to(device) for t in data.validation.tensors) if data.validation is not None else None,
        "test": tuple(t.to(device) for t in data.test.tensors) if evaluate_test else None,
    }
    model = build_configured_model(config, input_shape=data.input_shape, num_classes=data.num_classes)
    model = model.to(device, memory_format=layout)
    # Copied before an engine wraps the model, so that the average carries none of its hooks.
    ema_decay = config.optimizer.ema_decay
    average = ParameterAverage(model, decay=ema_decay) if ema_decay is not None else None
    optimizer = build_optimizer(config, model)
    views = augmentation_views(config.data, input_shape=data.input_shape, generator=augment_generator)  # augmult
    step = PlainStep(model, optimizer, augmult=config.data.augmult, views=views)
    if plan.private:
        step = make_private_step(
            model,
            optimizer,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=privacy.max_grad_norm,
            expected_batch_size=plan.sample_rate * train_size,
            clipping=privacy.clipping,
            grad_sample_mode=privacy.grad_sample_mode,
            noise_generator=noise_generator,
            augmult=config.data.augmult,
            views=views,
            precision=precision.name,
        )
        model, optimizer = step.model, step.optimizer
        if config.channels_last:  # auto's choice, checked now that it is made
            require_channels_last(step.engine)
    base_optimizer = getattr(optimizer, "original_optimizer", optimizer)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(base_optimizer, T_max=plan.max_steps)
        if config.optimizer.lr_schedule == "cos"
        else None
    )

    reports: list[EpochReport] = []
    steps = 0
    checkpoint = Path(checkpoint_path) if checkpoint_path is not None else None
    if checkpoint is not None and checkpoint.exists():
        # Loaded on the CPU: generators take their state only as a CPU ByteTensor, and the model's
        # and optimizer's load_state_dict copy onto the parameters' device themselves.
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if not _same_config(state["config"], config):
            raise ConfigError(
                f"Expected checkpoint {checkpoint} to belong to this configuration, but it was written "
                "by a different one; delete it or choose another checkpoint path."
            )
        model.load_state_dict(state["model"])
        base_optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        sampling_generator.set_state(state["sampling_rng"].to(sampling_generator.get_state().device))
        noise_generator.set_state(state["noise_rng"].to(noise_generator.get_state().device))
        if state.get("augment_rng") is not None:  # checkpoints from before augmult lack it (and had none)
            augment_generator.set_state(state["augment_rng"].to(augment_generator.get_state().device))
        torch.set_rng_state(state["torch_rng"])
        # Dropout on a GPU draws from the CUDA generators, not the CPU one: without their state a
        # resumed run would add the same noise but drop other units. Older checkpoints lack it.
        if state.get("cuda_rng") is not None and device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if average is not None:
            average.load_state_dict(state["average"])
        steps = state["steps"]
        # Checkpoints written before train_loss was withdrawn from the reports still hold it.
        reports = [EpochReport(**{k: v for k, v in r.items() if k != "train_loss"}) for r in state["reports"]]

    stopped_early = bool(reports) and reports[-1].stopped_by_budget
    last_saved = time.monotonic()
    model.train()
    epoch = len(reports)
    while epoch < config.epochs and steps < plan.max_steps and not stopped_early:
        epoch += 1
        epoch_steps = min(plan.steps_per_epoch, plan.max_steps - steps)
        started = time.perf_counter()
        # Summed only to detect divergence; never reported (see EpochReport).
        loss_sum = torch.zeros((), device=device)
        for indices, ends_step in poisson_batches(
            num_examples=train_size,
            sample_rate=plan.sample_rate,
            steps=epoch_steps,
            generator=sampling_generator,
            max_physical_batch_size=config.max_physical_batch_size,
            optimizer=optimizer if plan.private else None,
        ):
            images, labels = train_images[indices], train_labels[indices]  # indices are on the device already
            if len(indices) == 0 and not plan.private:
                continue  # under DP an empty Poisson batch is still a step: it releases pure noise
            with precision.training():  # the engine keeps norms, clipped sums and noise float32 inside it
                loss = step.backward(images, labels)  # the engine's protocol, empty batches included
            loss_sum += loss * len(indices)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ends_step:
                steps += 1
                if average is not None:  # once per logical batch, not per virtual-batch chunk
                    average.update(getattr(model, "_module", model))
                if scheduler is not None:
                    scheduler.step()
        train_seconds = time.perf_counter() - started
        if not torch.isfinite(loss_sum).item():
            raise TrainingDiverged(
                f"the loss became non-finite in epoch {epoch} (lr={config.optimizer.lr}, "
                f"max_grad_norm={privacy.max_grad_norm}); lower the learning rate."
            )
        started = time.perf_counter()
        if average is None:
            measured = evaluate_splits(model, eval_splits, batch_size=config.test_batch_size)
        else:
            raw = evaluate_splits(model, eval_splits, batch_size=config.test_batch_size)
            measured = evaluate_splits(average.module, eval_splits, batch_size=config.test_batch_size)
            measured.update({f"{key}_raw": value for key, value in raw.items() if key.endswith("_accuracy")})
        eval_seconds = time.perf_counter() - started
        stopped_early = steps >= plan.max_steps and plan.max_steps < plan.planned_steps
        report = epoch_report(
            plan,
            epoch=epoch,
            steps=steps,
            measured=measured,
            train_seconds=train_seconds,
            eval_seconds=eval_seconds,
            stopped_by_budget=stopped_early,
        )
        improved = report.val_accuracy is not None and all(
            r.val_accuracy is None or report.val_accuracy > r.val_accuracy for r in reports
        )
        reports.append(report)
        released = average.module if average is not None else getattr(model, "_module", model)
        if best_model_path is not None and improved:
            save_best_model(
                Path(best_model_path),
                released,
                report,
                input_shape=data.input_shape,
                num_classes=data.num_classes,
            )
        last_epoch = epoch >= config.epochs or steps >= plan.max_steps
        saves = last_epoch or time.monotonic() - last_saved >= checkpoint_every_seconds
        if checkpoint is not None and (saves or (best_model_path is not None and improved)):
            last_saved = time.monotonic()
            _save_checkpoint(
                checkpoint,
                {
                    "config": config.to_dict(),
                    "model": model.state_dict(),
                    "average": average.state_dict() if average is not None else None,
                    "optimizer": base_optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "sampling_rng": sampling_generator.get_state(),
                    "noise_rng": noise_generator.get_state(),
                    "augment_rng": augment_generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    # Only a run on a GPU draws from the CUDA generators; asking others would start CUDA.
                    "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                    "steps": steps,
                    "reports": [r.to_dict() for r in reports],
                },
            )
        if asks_to_stop(on_epoch, report):
            stopped_early = True
            break

    resolved = config.replace(noise_multiplier=plan.noise_multiplier) if plan.private else config
    return TrainResult(
        config=resolved,
        plan=plan,
        reports=tuple(reports),
        stopped_early=stopped_early,
        model=average.module if average is not None else getattr(model, "_module", model),
    )


# ---------------------------------------------------------------------------------------------- command line


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def main(argv: list[str] | None = None) -> int:
    """``python -m dp_core.train``: train the configuration the flags describe and print its metrics JSON."""
    # Imported here: a sweep's workers import this module for train() and need neither.
    from tqdm import tqdm

    from dp_core.cli import build_parser, config_from_args, seed_given

    args = build_parser().parse_args(argv)
    try:
        seed_was_given = seed_given(args)
        config = config_from_args(args)
        bar = tqdm(total=config.epochs, desc="epochs", unit="epoch", file=sys.stderr)

        def on_epoch(report: EpochReport) -> None:
            bar.update(1)
            shown = {"val_acc": report.val_accuracy, "acc": report.test_accuracy, "test_loss": report.test_loss}
            bar.set_postfix(
                **{k: f"{v:.3f}" for k, v in shown.items() if v is not None},
                eps=f"{report.epsilon:.2f}",
                delta=f"{report.delta:g}",
                accountant=report.accountant,
            )

        result = train(config, on_epoch=on_epoch, checkpoint_path=args.checkpoint)
        bar.close()
    except (ConfigError, TrainingDiverged) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    final = result.final
    metrics = {
        **({"val_accuracy": final.val_accuracy, "val_loss": final.val_loss} if final.val_accuracy is not None else {}),
        "test_accuracy": final.test_accuracy,
        "test_loss": final.test_loss,
        **({"test_accuracy_raw": final.test_accuracy_raw} if final.test_accuracy_raw is not None else {}),
        "epochs_trained": final.epoch,
        "steps": final.steps,
        "epsilon": _finite_or_none(final.epsilon),
        "delta": final.delta,
        "accountant": final.accountant,
        "noise_multiplier": result.plan.noise_multiplier,
        "sample_rate": result.plan.sample_rate,
        "stopped_early": result.stopped_early,
        "train_seconds": sum(r.train_seconds for r in result.reports),
        # The seed is printed only when given (a reproducible run): a drawn one must stay secret.
        "config": {k: v for k, v in result.config.to_dict().items() if k != "seed" or seed_was_given},
    }
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.metrics_json is not None:
        args.metrics_json.write_text(text + "\n")
    privacy = (
        "no privacy (ε = ∞)"
        if not math.isfinite(final.epsilon)
        else (
            f"ε = {final.epsilon:.3f} (δ = {final.delta:g}, {final.accountant.upper()} accountant, "
            f"σ = {result.plan.noise_multiplier:.3f})"
        )
    )
    print(f"test accuracy {final.test_accuracy:.4f} after {final.epoch} epochs; {privacy}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
