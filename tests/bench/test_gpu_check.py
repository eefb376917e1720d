"""bench/gpu_check.py on its CPU dry-run path: every step runs and the JSON names the device.

No GPU is needed (nor used): the dry run is the same script with tiny settings on the CPU, so a GPU
machine finds it working. Its figures measure nothing and are not asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_the_report(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out-dir", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    (written,) = tmp_path.glob("gpu-check-dryrun-cpu-*.json")
    report = json.loads(written.read_text())
    assert report["dry_run"] is True and "CPU (dry run)" in report["device_name"]
    assert {k: report[k]["status"] for k in ("engines", "precision", "sweep", "packs")} == {
        "engines": "ok",
        "precision": "ok",
        "sweep": "ok",
        "packs": "ok",
    }
    assert report["recipe"]["status"] == "ok"
    # 1. the DP step against the non-private step, for both GPU models, time and memory.
    cases = {(c["model"], c["batch_size"]): c for c in report["engines"]["cases"]}
    assert set(cases) == {("resnet18_gn", 2), ("wrn16_4", 2)}
    assert all(
        c["auto_engine"] == "bk" and c["auto_time_ratio"] > 0 and c["auto_memory_ratio"] > 0 for c in cases.values()
    )
    # 1b. precision and layout: the non-private and the default engine's step, with and without channels_last,
    # in every precision dp_core.bench was asked for; and steps/s with sampling on the device and on the host.
    precision = report["precision"]
    timed = {
        (c["precision"], c["channels_last"], c["engine"]) for c in precision["cases"] if c.get("ms_per_step", 0) > 0
    }
    precisions = precision["precisions"].split(",")
    assert precisions == ["fp32", "bf16"]  # tf32 needs CUDA: a dry run asks for the two a CPU has
    assert timed == {(p, layout, engine) for p in precisions for layout in (False, True) for engine in ("none", "bk")}
    assert all(c["model"] == "cifar_cnn" and c["batch_size"] == 2 and c["peak_mb"] > 0 for c in precision["cases"])
    assert {(s["channels_last"], s["engine"]) for s in precision["sampling"] if s["precision"] == "fp32"} == {
        (False, "bk"),
        (True, "bk"),
    }
    assert all(s["device_steps_per_s"] > 0 and s["host_steps_per_s"] > 0 for s in precision["sampling"])
    # 2. the sweep: the launcher's time split and throughput, read back from its MLflow parent run.
    sweep = report["sweep"]
    assert sweep["space"]["fixed"]["dataset"] == "synthetic_cifar10" and sweep["space"]["fixed"]["lr_schedule"] == "cos"
    assert 0 < sweep["sweep"]["train_share"] <= 1 and sweep["sweep"]["trial_epochs_per_second"] > 0
    assert sweep["sweep"]["trials"].get("completed") == "2"
    assert sweep["gpu"] == {"sampled": False, "why": "dry run"}
    # 3. packs of CNN trials against one after another.
    assert [row["group_size"] for row in report["packs"]["results"]] == [1, 2]
    assert isinstance(report["packs"]["packs_pay"], bool)
    # 4. the cifar10_sota recipe: the shipped space's keys (augmult, EMA, WRN-WS) at a tiny size, timed steps.
    recipe = report["recipe"]["result"]
    assert recipe["engine"] == "bk" and recipe["steps_timed"] == 2 and recipe["examples_per_second"] > 0
    assert recipe["projected_minutes_for_875_steps"] > 0 and recipe["projected_at_most_80_minutes"] is None
    # The targets are for a GPU: not judged on a dry run.
    assert set(report["targets"].values()) == {None}
