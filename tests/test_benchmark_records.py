"""The helpers that turn runs into committed benchmark records: a record names run folders, never
where this machine keeps them, and the scaling benchmark's line fit is exact on a line."""

from __future__ import annotations

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

from record_seeds import without_machine_folders  # noqa: E402
from scaling import line_fit  # noqa: E402


def test_teacher_notes_keep_the_run_folder_name_and_drop_its_location():
    note = ("One teacher, loaded from /home/me/runs/sr/cnn32/sr-20261201-221732/checkpoints/teacher/best.safetensors, "
            "shared by seeds 0, 1. One teacher, loaded from <cnn32 teacher run>/checkpoints/teacher/last.safetensors.")
    assert without_machine_folders(note) == (
        "One teacher, loaded from <runs>/sr-20261201-221732/checkpoints/teacher/best.safetensors, shared by seeds 0, 1. "
        "One teacher, loaded from <cnn32 teacher run>/checkpoints/teacher/last.safetensors.")
    assert without_machine_folders("A teacher trained in this run.") == "A teacher trained in this run."


def test_the_scaling_line_fit_recovers_a_line_and_its_fixed_part():
    fixed, per_image = line_fit([192, 384, 768, 1536], [1.5 + 0.02 * x for x in (192, 384, 768, 1536)])
    assert fixed == pytest.approx(1.5) and per_image == pytest.approx(0.02)
