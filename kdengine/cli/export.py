"""``kdengine export RUN_DIR``: export a run's student, check it, write a model card."""

from __future__ import annotations

import argparse

from kdengine.cli._args import positive_int, shape


def max_drop(text: str) -> tuple[str | None, float]:
    """``X`` (the monitored metric) or ``METRIC=X``."""
    name, _, value = text.rpartition("=")
    try:
        return (name or None), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or METRIC=NUMBER, e.g. 0.01 or ods=0.02; "
                                         f"got '{text}'") from None


def add_parser(sub) -> None:
    export = sub.add_parser("export", help="export a run's distilled student (or another stage), check it, "
                            "write a model card")
    export.add_argument("run_dir", help="a run folder (with recipe.json and checkpoints/<stage>/best.safetensors)")
    export.add_argument("--format", required=True, choices=["onnx", "safetensors", "torchscript"])
    export.add_argument("--output", help="folder for the exported files (default: RUN_DIR/export/<format>)")
    export.add_argument("--input-shape", type=shape, help="per-image input shape, e.g. 3,32,32 "
                        "(default: taken from the recipe's dataset)")
    export.add_argument("--throughput-batch", type=positive_int, default=32, help="batch size of the throughput measurement")
    export.add_argument("--latency-runs", type=positive_int, default=10, help="timed runs per latency measurement")
    export.add_argument("--stage", default="distilled", help="which stage's model: distilled (default), teacher, "
                        "scratch, or a progressive chain's generation")
    export.add_argument("--quantize", choices=["int8"], help="also write a static int8 ONNX model "
                        "(onnxruntime), scored beside the fp32 one on the card")
    export.add_argument("--calibration-images", type=positive_int, default=256, metavar="N",
                        help="train images that calibrate the int8 ranges (default 256)")
    export.add_argument("--max-drop", type=max_drop, action="append", metavar="[METRIC=]X",
                        help="warn when int8 scores worse than fp32 by more than X, in the metric's unit "
                             "(default metric: the monitored one; repeatable)")
    export.add_argument("--per-tensor", action="store_true",
                        help="int8 weights with one scale per tensor instead of one per output channel")


def main(args) -> int:
    from kdengine.tools.export import export_run
    from kdengine.tools.quantize import summary_lines

    drops = dict(args.max_drop) if args.max_drop else None  # the key None: the monitored metric
    report = export_run(args.run_dir, args.format, output_dir=args.output, input_shape=args.input_shape,
                        throughput_batch=args.throughput_batch, latency_runs=args.latency_runs, stage=args.stage,
                        quantize=args.quantize, calibration_images=args.calibration_images, max_drop=drops,
                        per_channel=not args.per_tensor)
    atol, rtol = report.tolerance
    print(f"Exported {report.path} ({report.file_bytes / 2**20:.2f} MiB); max |diff| vs PyTorch "
          f"{report.max_abs_diff:.3g} (tolerance {atol:g} + {rtol:g} * |output|)")
    if report.int8 is not None:
        print("\n".join(summary_lines(report.int8)))
    print(f"Model card: {report.card}")
    return 0
