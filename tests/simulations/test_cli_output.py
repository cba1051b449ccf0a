"""What ``fedguard simulate`` prints: a warning per protection switched off, no stage that does not happen."""

from __future__ import annotations

from rich.console import Console

from simulations.cli import ProgressPrinter, off_warnings


def test_each_protection_switched_off_warns_naming_its_flag() -> None:
    assert off_warnings(3.0, "trigger-set", "secagg+") == []
    warnings = off_warnings(0.0, "none", "none")
    assert [w.split(":")[1].strip() for w in warnings] == ["--dp-epsilon 0", "--watermark none", "--secure-agg none"]
    assert all(w.startswith("warning:") for w in warnings)


def test_no_watermark_stage_line_with_watermark_none() -> None:
    def lines(watermark: str) -> str:
        console = Console(record=True, width=200)
        printer = ProgressPrinter(console, watermark)
        printer("stage", {"stage": "watermark"})
        printer("stage", {"stage": "publish"})
        return console.export_text()

    assert "embedding and verifying the watermark" in lines("trigger-set")
    assert "watermark" not in lines("none") and "signing and registering the model" in lines("none")
