"""``bench/effects.py`` run for real on the CPU at a tiny frame size: every size and batch gets
the four effects and the temporal step, what each adds is measured against the whole-frame blur
of its own size and batch (the temporal step adds its whole time), and the JSON says where and
how it ran."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

EFFECTS_BENCH = Path(__file__).resolve().parents[2] / "bench" / "effects.py"
EFFECTS = ["blur (whole frame)", "blur (halo-free)", "color", "image", "temporal step"]


def load_effects():
    spec = importlib.util.spec_from_file_location("bench_effects", EFFECTS_BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_effect_is_timed_and_set_against_the_whole_frame_blur(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    effects = load_effects()
    out = tmp_path / "effects.json"
    argv = ["--device", "cpu", "--sizes", "96x54", "--batches", "1,2", "--cpu-reps", "2"]
    assert effects.main([*argv, "--out", str(out)]) == 0

    result = json.loads(out.read_text())
    assert result["device"].startswith("cpu: ")
    assert result["command"] == " ".join(["bench/effects.py", *argv, "--out", str(out)])
    assert result["date"][:4].isdigit()
    rows = result["rows"]
    assert [(r["batch"], r["effect"]) for r in rows] == [(b, e) for b in (1, 2) for e in EFFECTS]
    for batch in (1, 2):
        group = {r["effect"]: r for r in rows if r["batch"] == batch}
        base = group["blur (whole frame)"]["us_per_frame"]
        for effect, row in group.items():
            assert row["device"] == "cpu" and row["frame"] == "96x54" and row["reps"] == 2
            assert 0 < row["min_us_per_frame"] <= row["us_per_frame"]
            if effect == "temporal step":  # runs besides the postprocess: adds all of itself
                expected = row["us_per_frame"]
            else:
                expected = row["us_per_frame"] - base
            assert row["added_us"] == pytest.approx(expected, abs=0.011)
            assert row["added_pct"] == pytest.approx(100 * expected / base, abs=0.051)
        assert group["blur (whole frame)"]["added_us"] == 0.0
    table = capsys.readouterr().out
    assert "| cpu | 96x54 | 2 | temporal step |" in table
    assert "(baseline)" in table


def test_sizes_are_named_or_given_as_width_x_height() -> None:
    effects = load_effects()
    assert effects.parse_size("1080p") == ("1080p", (1080, 1920))
    assert effects.parse_size("320x180") == ("320x180", (180, 320))
    for bad in ("1080", "8x8", "320X180"):
        with pytest.raises(argparse.ArgumentTypeError):
            effects.parse_size(bad)
