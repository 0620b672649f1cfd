"""``kdengine run RECIPE`` (and ``--resume RUN_DIR``): train teacher, baseline and distilled student."""

from __future__ import annotations

import os
import subprocess
import sys

from kdengine.cli._args import add_recipe, positive_int, seed_list
from kdengine.errors import KDEngineError


def add_parser(sub) -> None:
    run = sub.add_parser("run", help="train teacher, baseline and distilled student")
    add_recipe(run, nargs="?")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run in its folder")
    run.add_argument("--num-processes", type=positive_int, default=1, metavar="N",
                     help="data-parallel training in N local processes (DDP; gloo on CPU, NCCL on GPUs)")
    run.add_argument("--output-dir", help="parent folder of the run folder (default: the recipe's run.output_dir)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--seeds", type=seed_list, help="repeat the run once per seed, e.g. 0,1,2, and report mean ± std")
    run.add_argument("--teacher-from", metavar="RUN_DIR",
                     help="use the teacher that a finished run trained (its best weights) instead of training one")


def launch_processes(args) -> int:
    """``--num-processes N``: start N copies of this command under torch.distributed.run; Accelerate
    picks up the process group from its environment (as with ``accelerate launch``)."""
    import torch

    argv = list(args.argv)  # the command's own arguments: main([...]) is not the process's sys.argv
    cut = [i for i, a in enumerate(argv) if a == "--num-processes" or a.startswith("--num-processes=")]
    for i in reversed(cut):
        del argv[i:i + (1 if "=" in argv[i] else 2)]
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={args.num_processes}", "-m", "kdengine", *argv]
    return subprocess.run(command, env=env).returncode


def main(args) -> int:
    from accelerate.state import PartialState

    from kdengine import api
    from kdengine.reporting.tables import generation_table, table

    if args.num_processes > 1 and "WORLD_SIZE" not in os.environ:
        if args.recipe and not args.resume:  # a recipe the processes cannot share stops here, with exit 2
            from kdengine.recipe import load_recipe
            from kdengine.recipe.stages import plan_stages
            from kdengine.train.run import check_batch_split

            recipe = load_recipe(args.recipe, args.overrides)
            plans = plan_stages(recipe)
            check_batch_split(recipe, plans, plans, args.num_processes)
        return launch_processes(args)
    if args.resume:
        if args.recipe or args.overrides or args.seeds or args.teacher_from:
            raise KDEngineError("--resume takes the recipe from the run folder; give no recipe, --set, --seeds "
                                "or --teacher-from")
        results = api.resume(args.resume, progress=not args.no_progress)
    elif not args.recipe:
        raise KDEngineError("kdengine run: give a recipe file (or --resume RUN_DIR)")
    else:
        results = api.run(args.recipe, overrides=args.overrides, progress=not args.no_progress,
                          output_dir=args.output_dir, seeds=args.seeds, teacher_from=args.teacher_from)
    if not PartialState().is_main_process:  # with several processes, one table is enough
        return 0
    print(table(results))
    if any(getattr(s, "generation", None) for s in getattr(results, "stages", [])):
        print("\n" + generation_table(results))
    print(f"\nRun folder: {results.run_dir}")
    return 0
