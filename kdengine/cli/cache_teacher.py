"""``kdengine cache-teacher RECIPE``: compute a checkpoint teacher's outputs on the students' batches once."""

from __future__ import annotations

from kdengine.cli._args import add_recipe


def add_parser(sub) -> None:
    cache = sub.add_parser("cache-teacher", help="compute a checkpoint teacher's outputs on the students' batches once")
    add_recipe(cache, help="a recipe file (TOML) with teacher.checkpoint or teacher.train = false")
    cache.add_argument("--output-dir", help="where the teacher-cache/ folder goes (default: the recipe's run.output_dir)")
    cache.add_argument("--no-progress", action="store_true", help="no progress messages")


def main(args) -> int:
    from kdengine.api import cache_teacher

    for cache in cache_teacher(args.recipe, overrides=args.overrides, progress=not args.no_progress,
                               output_dir=args.output_dir):
        epochs = len(list(cache.path.glob("epoch-*")))
        print(f"{cache.path}: {epochs} epochs, {cache.size_bytes() / 2**20:.1f} MiB ({cache.meta['dtype']})")
    return 0
