"""The sweep's privacy ledger and secret: what they keep, once, durably, and for their owner only."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from sweeps.planning import plan_trial
from sweeps.privacy import sweep_secret
from sweeps.privacy.ledger import LedgerEntry, PrivacyLedger
from sweeps.privacy.mechanism import TrialMechanism


def _entry(key: str, **extra) -> LedgerEntry:
    return LedgerEntry(
        key=key,
        name=f"trial_{key}",
        role=extra.pop("role", "trial"),
        noise_multiplier=1.0,
        sample_rate=0.1,
        steps=10,
        **extra,
    )


def test_each_run_is_recorded_once_owner_only_and_survives_a_torn_last_line(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "sweep" / "ledger.jsonl")
    assert ledger.record([_entry("a"), _entry("b")]) == [_entry("a"), _entry("b")]
    assert ledger.record([_entry("a"), _entry("c", role="audit")]) == [_entry("c", role="audit")]
    assert stat.S_IMODE(ledger.path.stat().st_mode) == 0o600
    with ledger.path.open("a") as handle:
        handle.write('{"key": "d", "name": "trial_d", "ro')  # a launcher killed mid-write
    reread = PrivacyLedger(ledger.path)
    assert [e.key for e in reread.entries()] == ["a", "b", "c"]
    assert reread.mechanisms()[0] == TrialMechanism(noise_multiplier=1.0, sample_rate=0.1, steps=10)
    with pytest.raises(ValueError, match="role"):
        _entry("x", role="confirmation?")


def test_an_entry_from_a_trial_spec_keeps_a_seed_only_when_the_space_made_it_public() -> None:
    planned = plan_trial(
        {
            "dataset": "digits",
            "model": "mlp",
            "noise_multiplier": 1.2,
            "batch_size": 128,
            "epochs": 2,
            "delta": 1e-5,
            "seed": 987654321,
        },
        name="trial_0003",
        axis_values={},
    )
    secret = LedgerEntry.from_spec(planned.spec(), public_seed=False)
    assert secret.public_seed is None and "987654321" not in json.dumps(secret.__dict__)
    assert LedgerEntry.from_spec(planned.spec(), public_seed=True).public_seed == 987654321
    assert secret.mechanism() == TrialMechanism.from_plan(planned.plan)
    assert "seed" not in planned.params() and "987654321" not in planned.key


def test_the_secret_root_is_drawn_fresh_kept_owner_only_and_read_back(tmp_path: Path) -> None:
    roots = {sweep_secret.draw() for _ in range(20)}
    assert len(roots) == 20 and all(0 <= root < 2**62 for root in roots)
    folder = tmp_path / "results" / "sweep-1"
    assert sweep_secret.read(folder) is None
    root = sweep_secret.draw()
    sweep_secret.keep(folder, root)
    sweep_secret.keep(folder, root + 1)  # a resumed launch never replaces it
    assert sweep_secret.read(folder) == root
    assert stat.S_IMODE((folder / sweep_secret.SECRET_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert sweep_secret.derived_seed(root, sweep_secret.SAMPLER) != sweep_secret.derived_seed(
        root, sweep_secret.SELECTION
    )
