"""Wall time of ``kdengine validate`` for every recipe in ``recipes/``, each in a fresh process
(imports, data decoding, the dry run and its report included), as a user runs it::

    python benchmarks/validate_time.py [--data-root path/to/data] [--rounds 3] [--json FILE]

Offline, the ImageNet encoder weights of the smp U-Nets are replaced by random ones (the dry run
checks the same shapes, taps and losses either way). A recipe whose data or weights are not on
this machine (CIFAR-100, the VGG19 weights of the perceptual loss) stops at its clear error in a
few seconds; the table marks it "needs ..." and its time is not a dry run's. With ``--data-root``
(a folder holding ``BSDS500/``), ``recipes/edge-bsds500.toml`` reads the real BSDS500.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stagemeter import busy_processes, write_report  # noqa: E402

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
RANDOM_ENCODERS = ["--set", "teacher.params.encoder_weights=none", "--set", "student.params.encoder_weights=none"]


def overrides(recipe: Path, data_root: Path | None) -> list[str]:
    text = recipe.read_text()
    extra = RANDOM_ENCODERS if 'encoder_weights = "imagenet"' in text else []
    if recipe.stem == "edge-bsds500" and data_root is not None:
        extra += ["--set", f"data.params.root={data_root / 'BSDS500'}"]
    return extra


def time_validate(recipe: Path, extra: list[str]) -> tuple[float, int, str]:
    """Seconds, exit code and the last line of output of one ``kdengine validate`` process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "kdengine", "validate", str(recipe), *extra],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    lines = (done.stdout + done.stderr).strip().splitlines()
    return seconds, done.returncode, lines[-1] if lines else ""


def what_it_needs(last_line: str) -> str:
    for marker, need in (("CIFAR-100", "needs CIFAR-100"), ("VGG19", "needs VGG19 weights"),
                         ("BSDS500", "needs BSDS500")):
        if marker in last_line:
            return need
    return "error: " + last_line[:80]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, help="a folder holding BSDS500/ (for edge-bsds500.toml)")
    parser.add_argument("--rounds", type=int, default=3, help="processes per recipe (the median is shown)")
    parser.add_argument("--json", type=Path, default=Path("validate-time.json"))
    args = parser.parse_args()
    before = busy_processes()
    rows = []
    for recipe in sorted(RECIPES.glob("*.toml")):
        extra = overrides(recipe, args.data_root)
        runs = [time_validate(recipe, extra) for _ in range(args.rounds)]
        codes = {code for _, code, _ in runs}
        status = "ok" if codes == {0} else what_it_needs(runs[-1][2])
        rows.append({"recipe": f"recipes/{recipe.name}", "status": status,
                     "seconds": [round(s, 2) for s, _, _ in runs],
                     "median_seconds": round(statistics.median(s for s, _, _ in runs), 2),
                     "overrides": extra})
    table = ["| recipe | dry run | median s | rounds s |", "|---|---|---|---|"]
    for row in rows:
        table.append(f"| {row['recipe']} | {row['status']} | {row['median_seconds']:.1f} | "
                     f"{', '.join(f'{s:.1f}' for s in row['seconds'])} |")
    write_report(args.json, rows, "\n".join(table), before)


if __name__ == "__main__":
    main()
