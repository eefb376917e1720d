"""The benchmark's correctness gate and its JSON report (no timing is asserted)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch
import torch.nn as nn
from opacus.grad_sample.utils import wrap_model

from dp_core import bench, engines
from dp_core.bench import Case, check_engine, run_benchmark


class _MeanAsSum(engines.Engine):
    """The bug behind the seed benchmark's mismatch: hooks told the loss is summed when it is a mean,
    so every per-sample gradient comes out B times too small."""

    name = "mean_as_sum"

    def prepare(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, mechanism: engines.StepMechanism
    ) -> engines.PrivateStep:
        private_model = wrap_model(model, grad_sample_mode="hooks", batch_first=True, loss_reduction="sum")
        dp_optimizer = engines.make_dp_optimizer(optimizer, mechanism)
        return engines.GradSampleStep(engine=self.name, model=private_model, optimizer=dp_optimizer)


@pytest.fixture
def wrong_engine() -> Iterator[str]:
    engines.ENGINES.register(_MeanAsSum.name, _MeanAsSum())
    yield _MeanAsSum.name
    engines.ENGINES.unregister(_MeanAsSum.name)


CASE = Case(model="digits_cnn", input_shape=(1, 8, 8), batch_size=16)


def test_the_gate_passes_a_correct_engine_and_rejects_a_wrong_one(wrong_engine: str) -> None:
    good = check_engine("bk", CASE, device=torch.device("cpu"))
    assert good.correct and good.norm_error < 1e-4 and good.step_error < 1e-4
    bad = check_engine(wrong_engine, CASE, device=torch.device("cpu"))
    assert not bad.correct
    assert bad.norm_error > 0.5 and bad.grad_sample_error is not None and bad.grad_sample_error > 0.5
    assert "norm error" in bad.reason


def test_a_failed_engine_is_reported_but_never_timed(wrong_engine: str, tmp_path) -> None:
    report = run_benchmark(
        cases=[CASE],
        engines=[wrong_engine, "hooks", "bk"],
        device=torch.device("cpu"),
        warmup=1,
        repeats=2,
        out_dir=tmp_path,
        log=lambda _: None,
    )
    rows = report["results"][0]["engines"]
    assert rows[wrong_engine]["status"] == "failed" and "ratio" not in rows[wrong_engine]
    assert rows["hooks"]["status"] == rows["bk"]["status"] == "ok"
    assert report["results"][0]["best_opacus"] == "hooks"
    assert wrong_engine in bench.format_table(report["results"]) and "FAILED" in bench.format_table(report["results"])


def test_quick_run_writes_the_json_report(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    code = bench.main(
        [
            "--quick",
            "--models",
            "mlp",
            "--engines",
            "hooks,ghost,bk",
            "--warmup",
            "1",
            "--repeats",
            "2",
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    [path] = tmp_path.glob("cpu-*.json")
    report = json.loads(path.read_text())
    assert {
        "device",
        "device_name",
        "date",
        "torch",
        "opacus",
        "threads",
        "quick",
        "results",
        "load_average_before",
        "timing",
        "memory",
    } <= set(report)
    assert report["device"] == "cpu" and report["quick"] is True
    [result] = report["results"]
    assert result["model"] == "mlp" and result["auto"] == "bk"
    assert set(result["engines"]) == {"none", "hooks", "ghost", "bk"}
    for row in result["engines"].values():
        assert row["status"] == "ok"
        assert {"median_s", "ratio", "cpu_median_s", "cpu_ratio", "peak_step_bytes", "mem_ratio"} <= set(row)
        assert row["median_s"] > 0 and row["peak_step_bytes"] > 0
    assert result["engines"]["none"]["ratio"] == 1.0
    assert result["auto_over_best_opacus"] > 0
    assert "mlp" in capsys.readouterr().out


def test_precisions_time_each_case_per_precision_and_skip_tf32_on_a_cpu(tmp_path) -> None:
    code = bench.main(
        ["--models", "mlp", "--batch-size", "8", "--engines", "ghost,bk", "--precisions", "fp32,bf16,tf32"]
        + ["--warmup", "0", "--repeats", "1", "--out-dir", str(tmp_path)]
    )
    assert code == 0
    [path] = tmp_path.glob("cpu-*.json")
    report = json.loads(path.read_text())
    assert report["precisions"] == ["fp32", "bf16"] and "CUDA" in report["skipped_precisions"]["tf32"]
    by_precision = {r["precision"]: r["engines"] for r in report["results"]}
    assert set(by_precision) == {"fp32", "bf16"}
    for rows in by_precision.values():
        assert rows["none"]["ratio"] == 1.0 and rows["bk"]["status"] == "ok" and rows["bk"]["peak_step_bytes"] > 0
    assert by_precision["fp32"]["ghost"]["status"] == "ok"
    assert (
        by_precision["bf16"]["ghost"]["status"] == "unsupported" and "bf16" in by_precision["bf16"]["ghost"]["reason"]
    )
    assert "bf16" in bench.format_table(report["results"])
    # tf32 alone on a CPU measures nothing: a failed run, not an empty success.
    assert bench.main(["--precisions", "tf32", "--models", "mlp", "--no-save"]) == 1
    with pytest.raises(SystemExit):
        bench.main(["--precisions", "fp16", "--no-save"])
