"""``kdengine evaluate RUN_DIR``: score a finished run's stages again and print the table."""

from __future__ import annotations


def add_parser(sub) -> None:
    evaluate = sub.add_parser("evaluate", help="score a finished run's stages again (val or test, best or last weights)")
    evaluate.add_argument("run_dir", help="a finished run folder (with recipe.json and results.json)")
    evaluate.add_argument("--split", choices=["test", "val"], default="test")
    evaluate.add_argument("--weights", choices=["best", "last"], default="best",
                          help="each stage's best weights (chosen on the monitor split) or its last")
    evaluate.add_argument("--stage", dest="stages", action="append", metavar="NAME",
                          help="score only this stage (repeatable; default: every stage)")
    evaluate.add_argument("--metric", dest="metrics", action="append", metavar="NAME",
                          help="score with this metric instead of the recipe's (repeatable)")


def main(args) -> int:
    from kdengine.api import evaluate

    print(evaluate(args.run_dir, split=args.split, weights=args.weights, stages=args.stages,
                   metrics=args.metrics).table())
    return 0
