"""``kdengine export RUN_DIR``: export a run's student, check it, write a model card."""

from __future__ import annotations

from kdengine.cli._args import shape


def add_parser(sub) -> None:
    export = sub.add_parser("export", help="export a run's distilled student, check it, write a model card")
    export.add_argument("run_dir", help="a run folder (with recipe.json and checkpoints/distilled/best.safetensors)")
    export.add_argument("--format", required=True, choices=["onnx", "safetensors", "torchscript"])
    export.add_argument("--output", help="folder for the exported files (default: RUN_DIR/export/<format>)")
    export.add_argument("--input-shape", type=shape, help="per-image input shape, e.g. 3,32,32 "
                        "(default: taken from the recipe's dataset)")
    export.add_argument("--throughput-batch", type=int, default=32, help="batch size of the throughput measurement")
    export.add_argument("--latency-runs", type=int, default=10, help="timed runs per latency measurement")


def main(args) -> int:
    from kdengine.tools.export import export_run

    report = export_run(args.run_dir, args.format, output_dir=args.output, input_shape=args.input_shape,
                        throughput_batch=args.throughput_batch, latency_runs=args.latency_runs)
    atol, rtol = report.tolerance
    print(f"Exported {report.path} ({report.file_bytes / 2**20:.2f} MiB); max |diff| vs PyTorch "
          f"{report.max_abs_diff:.3g} (tolerance {atol:g} + {rtol:g} * |output|)")
    print(f"Model card: {report.card}")
    return 0
