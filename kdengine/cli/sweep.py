"""``kdengine sweep RECIPE --grid KEY=V1,V2`` (and ``--resume SWEEP_DIR``): the student at several
sizes, one teacher for all; parameters, test metric and CPU latency per point."""

from __future__ import annotations

from kdengine.cli._args import add_recipe, positive_int


def add_parser(sub) -> None:
    sweep = sub.add_parser("sweep", help="train the student at every point of a grid of recipe values, one teacher "
                           "for all; parameters, test metric and CPU latency per point")
    add_recipe(sweep, nargs="?")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                       help="an axis: a recipe field and its values, e.g. student.params.width_mult=1.0,0.75,0.5 "
                            "(values parsed like --set values; a second --grid: the cartesian product)")
    sweep.add_argument("--output-dir", help="parent folder of the sweep folder (default: the recipe's run.output_dir)")
    sweep.add_argument("--quantize", choices=["int8"], help="also time and score each student as a static int8 "
                       "ONNX model (onnxruntime)")
    sweep.add_argument("--teacher-from", metavar="RUN_DIR",
                       help="a finished run whose trained teacher (its best weights) teaches every point")
    sweep.add_argument("--teacher-stage", metavar="NAME",
                       help="with --teacher-from: that run's stage NAME teaches instead (a progressive chain's "
                            "generation, by its name or as gen<N>); its model becomes the teacher")
    sweep.add_argument("--resume", metavar="SWEEP_DIR", help="continue a killed sweep in its folder")
    sweep.add_argument("--latency-runs", type=positive_int, default=10, metavar="N",
                       help="timed runs per latency measurement (the median is reported)")
    sweep.add_argument("--calibration-images", type=positive_int, default=256, metavar="N",
                       help="train images that calibrate the int8 ranges (default 256)")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args) -> int:
    from kdengine.reporting.sweep_report import sweep_table
    from kdengine.api.sweep import sweep

    if args.resume:
        result = sweep(resume=args.resume, recipe=args.recipe, grid=args.grid, overrides=args.overrides,
                       output_dir=args.output_dir, quantize=args.quantize, teacher_from=args.teacher_from,
                       teacher_stage=args.teacher_stage, progress=not args.no_progress)
    else:
        result = sweep(args.recipe, args.grid, overrides=args.overrides, output_dir=args.output_dir,
                       quantize=args.quantize, teacher_from=args.teacher_from, teacher_stage=args.teacher_stage,
                       progress=not args.no_progress, latency_runs=args.latency_runs,
                       calibration_images=args.calibration_images)
    print(sweep_table(result))
    print(f"\n{result.teacher_note}")
    print(f"\nSweep folder: {result.sweep_dir}")
    return 0
