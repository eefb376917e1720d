"""One federated client: its shard, its Opacus-wrapped model and optimizer, its random streams.

A :class:`LocalClient` lives for the whole run (in the server's process or in a Ray actor) and
keeps its DP-SGD state across rounds: the per-sample-gradient wrapper, the DP optimizer, the
Poisson sampler's and the noise's generators. Each round it loads the global parameters, runs
``local_epochs`` epochs of dp_core's DP-SGD step on its shard, and returns its parameters.
All randomness comes from generators seeded by the client's own seed, so a client computes the
same bits in any process.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch import nn

from dp_core.config import TrainConfig
from dp_core.dpsgd import PlainStep, make_private_step, poisson_batches
from dp_core.models import build_configured_model
from dp_core.train import TrainingDiverged, build_optimizer, resolve_device

__all__ = ["ClientSetup", "ClientUpdate", "LocalClient", "client_seed"]

# Sub-streams of a client's seed.
_SAMPLING, _NOISE, _DROPOUT = 0, 1, 2


def client_seed(seed: int, client: int) -> int:
    """Client ``client``'s seed, derived from the run's ``seed`` (independent streams per client)."""
    return int(np.random.SeedSequence([seed, client]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _stream(seed: int, *path: int) -> int:
    return int(np.random.SeedSequence([seed, *path]).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClientSetup:
    """Everything one client needs, picklable, so it ships to a Ray actor as is.

    ``config`` holds the local DP-SGD settings shared by all clients (model, optimizer, lr, C,
    clipping, batch size or sample rate); σ is ``noise_multiplier`` (the plan's, already
    calibrated). ``images``/``labels`` are the client's shard only.
    """

    index: int
    seed: int
    config: TrainConfig
    images: torch.Tensor
    labels: torch.Tensor
    input_shape: tuple[int, ...]  # (C, H, W) or (D,)
    num_classes: int
    private: bool
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    total_steps: int

    @property
    def num_examples(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClientUpdate:
    """What a client sends back after a round: its parameters and its FedAvg weight n_i, nothing else.

    The parameters are the global model moved by clipped, noised gradients only (the round's DP
    output; the zoo's models hold no buffers, which would be un-noised statistics), and the shard
    size is the FedAvg weight the server needs. Anything else measured on the shard (its training
    loss, its own timing, which follows the Poisson batch sizes) is an un-noised statistic of the
    client's data and stays on the client; the order of the updates says which client sent which.
    """

    num_examples: int
    state: dict[str, torch.Tensor]


def _own_rng(device: torch.device) -> contextlib.AbstractContextManager:
    """Seed freely inside: the process' global generators are restored on exit."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class LocalClient:
    """One client's DP-SGD state across rounds. ``num_threads`` torch threads while it trains.

    The thread count is fixed (not left to the process) so a client computes the same bits
    in-process and in a Ray actor: parallel kernels may split reductions by thread.
    """

    def __init__(self, setup: ClientSetup, *, num_threads: int = 1) -> None:
        self.setup = setup
        self.num_threads = num_threads
        config = setup.config
        self.device = resolve_device(config.device)
        self.images = setup.images.to(self.device)
        self.labels = setup.labels.to(self.device)
        self.sampling_generator = torch.Generator(device=self.device).manual_seed(_stream(setup.seed, _SAMPLING))
        self.noise_generator = torch.Generator(device=self.device).manual_seed(_stream(setup.seed, _NOISE))
        with _own_rng(self.device), _threads(num_threads):
            # The initial weights are overwritten by the global model every round; seeding only
            # keeps construction from touching the process' global generator.
            torch.manual_seed(setup.seed)
            model = build_configured_model(config, input_shape=setup.input_shape, num_classes=setup.num_classes).to(
                self.device
            )
        optimizer = build_optimizer(config, model)
        # dp_core's DP-SGD step, whichever per-sample-gradient engine computes it (as in dp_core.train).
        self.step = PlainStep(model, optimizer)
        if setup.private:
            self.step = make_private_step(
                model,
                optimizer,
                noise_multiplier=setup.noise_multiplier,
                max_grad_norm=config.privacy.max_grad_norm,
                expected_batch_size=setup.sample_rate * setup.num_examples,
                clipping=config.privacy.clipping,
                grad_sample_mode=config.privacy.grad_sample_mode,
                noise_generator=self.noise_generator,
            )
        self.model, self.optimizer = self.step.model, self.step.optimizer
        self.base_optimizer = getattr(optimizer, "original_optimizer", optimizer)
        # The learning-rate schedule runs over the client's steps of the whole run, not per round.
        self.scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.base_optimizer, T_max=setup.total_steps)
            if config.optimizer.lr_schedule == "cos"
            else None
        )

    @property
    def module(self) -> nn.Module:
        """The plain model (without Opacus' per-sample-gradient wrapper)."""
        return getattr(self.model, "_module", self.model)

    def train_round(self, global_state: Mapping[str, torch.Tensor], *, round_index: int) -> ClientUpdate:
        """Load the global parameters, run ``steps_per_round`` DP-SGD steps, return the parameters.

        The optimizer's state (momentum, Adam moments) restarts every round: each round is local
        training from the global model, as in FedAvg (McMahan et al. 2017, "Communication-
        Efficient Learning of Deep Networks from Decentralized Data", Algorithm 1).
        """
        self.module.load_state_dict(global_state)
        self.base_optimizer.state.clear()
        self.optimizer.zero_grad(set_to_none=True)
        with _own_rng(self.device), _threads(self.num_threads):
            torch.manual_seed(_stream(self.setup.seed, _DROPOUT, round_index))  # dropout masks
            self.model.train()
            finite = self._steps(self.setup.steps_per_round)
        if not finite:
            lr, clip = self.setup.config.optimizer.lr, self.setup.config.privacy.max_grad_norm
            raise TrainingDiverged(
                f"client {self.setup.index}'s loss became non-finite in round {round_index} "
                f"(lr={lr}, max_grad_norm={clip}); lower the learning rate."
            )
        state = {key: value.detach().to("cpu", copy=True) for key, value in self.module.state_dict().items()}
        return ClientUpdate(num_examples=self.setup.num_examples, state=state)

    def _steps(self, steps: int) -> bool:
        """``steps`` logical DP-SGD steps on Poisson batches of the shard (dp_core.train's loop).

        Returns whether the loss stayed finite; the loss itself never leaves the client.
        """
        private = self.setup.private
        loss_sum = torch.zeros((), device=self.device)
        for indices, ends_step in poisson_batches(
            num_examples=self.setup.num_examples,
            sample_rate=self.setup.sample_rate,
            steps=steps,
            generator=self.sampling_generator,
            max_physical_batch_size=self.setup.config.max_physical_batch_size,
            optimizer=self.optimizer if private else None,
        ):
            if len(indices) == 0 and not private:
                continue  # under DP an empty Poisson batch is still a step: it releases pure noise
            loss = self.step.backward(self.images[indices], self.labels[indices])  # the engine's protocol
            loss_sum += loss * len(indices)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if ends_step and self.scheduler is not None:
                self.scheduler.step()
        return bool(torch.isfinite(loss_sum).item())
