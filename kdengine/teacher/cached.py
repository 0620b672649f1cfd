"""Building and opening a stage's teacher-output cache (the cache's format is in
:mod:`kdengine.teacher.cache`).

The cache is keyed by everything that changes the teacher's outputs on the student's batches:
the teacher (:func:`kdengine.teacher.keys.teacher_key`: its weights' hash, the factory and params
that build it, the code versions, the data and its fingerprint), the seed (which fixes the data
order and every augmentation draw), the rows of every step over the processes, the tapped
features, the precision and memory format the teacher runs in (the one measured under
``teacher.precision = "auto"``, not the word "auto"), and top-k storage (``teacher.cache_topk``),
so a top-k cache is never read by a full-logit run. The student's own precision and the rows a
build groups per teacher pass change no output and are not keyed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from accelerate.utils import slice_tensors

from kdengine.errors import KDEngineError, located
from kdengine.reporting.progress import console
from kdengine.teacher.cache import Layout, TeacherCache, cache_folder, epochs_present
from kdengine.teacher.keys import CacheKey, teacher_key
from kdengine.teacher.precision import InferenceSetting, agree, fixed_setting, stage_candidates, teacher_runner
from kdengine.teacher.replay import BatchAugmentStream, check_replayable
from kdengine.teacher.topk import topk_problem
from kdengine.runtime.tensors import prepare_inputs, to_device

if TYPE_CHECKING:
    from kdengine.recipe import Recipe
    from kdengine.recipe.stages import StagePlan
    from kdengine.teacher.sources import CachedTeacher
    from kdengine.train.context import RunContext


def default_cache_root(recipe: "Recipe", output_dir: Path) -> Path:
    return Path(recipe.teacher.cache_dir) if recipe.teacher.cache_dir is not None else output_dir / "teacher-cache"


def cached_epochs(recipe: "Recipe", epochs: int) -> int:
    """How many epochs of augmented batches the cache holds for a stage of ``epochs`` epochs."""
    views = recipe.teacher.cache_views
    return min(epochs, views) if views is not None else epochs


def built_setting(root: Path, options: list[InferenceSetting], key_for: Callable[[InferenceSetting], CacheKey],
                  layout: Layout, dtype: str, epochs: int) -> InferenceSetting | None:
    """Of the candidate settings, the one whose cache under ``root`` holds the most of the
    ``epochs`` the stage needs (None when no candidate has built any)."""
    present = {option: epochs_present(cache_folder(root, key_for(option), layout, dtype), epochs) for option in options}
    best = max(options, key=lambda option: present[option])
    return best if present[best] else None


def open_teacher_cache(ctx: "RunContext", plan: "StagePlan", source: "CachedTeacher", feature_paths: list[str],
                       steps: int, root: Path) -> TeacherCache:
    """The stage's teacher-output cache, with every epoch the stage trains present (the main
    process builds what is missing, drawing the student's data and augmentation stream)."""
    recipe, train, accelerator = ctx.recipe, plan.train, ctx.accelerator
    processes = accelerator.num_processes
    rows = len(ctx.train_set)
    sizes = [min(train.batch_size, rows - s * train.batch_size) for s in range(steps)]
    if processes > 1 and sizes[-1] != train.batch_size:
        raise KDEngineError(
            f"{recipe.source}: teacher.cache: the train split ({rows} rows) is smaller than one batch "
            f"({train.batch_size}); Accelerate pads such a batch across {processes} processes, which the cache "
            "does not replay: use a smaller batch_size or one process"
        )
    if any(size % processes for size in sizes):
        raise KDEngineError(
            f"{recipe.source}: train.batch_size: {train.batch_size} (and the last batch, {sizes[-1]}) must "
            f"divide evenly over {processes} processes for the teacher cache"
        )
    transfer = ctx.transfer  # its rows follow each process's labelled rows, in the cache as in training
    if transfer is not None and transfer.rows % processes:
        raise KDEngineError(f"{recipe.source}: data.transfer.ratio: {transfer.rows} transfer rows per step do not "
                            f"divide evenly over {processes} processes for the teacher cache")
    problem = topk_problem(None, feature_paths) if recipe.teacher.cache_topk is not None else None
    if problem is not None:  # known before anything is built; a dense output shows at the first batch
        raise KDEngineError(f"{recipe.source}: {problem}")
    layout = Layout(tuple(size + (transfer.rows if transfer is not None else 0) for size in sizes), processes)
    augment = BatchAugmentStream(ctx.provider.batch_augment, ctx.seed, ctx.device)

    def batches(epoch: int):
        loader = ctx.train_loader(train)
        loader.sampler.set_epoch(epoch)
        for step, batch in enumerate(loader):
            if step >= steps:
                break
            batch = to_device(batch, ctx.device)
            share = sizes[step] // processes
            pieces = []
            for process in range(processes):  # each process augments its own share
                piece = slice_tensors(batch, slice(process * share, (process + 1) * share)) if processes > 1 else batch
                inputs, _ = augment(*piece, epoch=epoch, step=step, process=process)
                if transfer is not None:
                    inputs = torch.cat([inputs, transfer.batch(epoch, step, process, processes).to(inputs.device)])
                pieces.append(prepare_inputs(inputs, train.channels_last))
            yield pieces[0] if processes == 1 else torch.cat(pieces)

    runners = []  # the teacher, once loaded

    def runner():
        if not runners:
            runners.append(teacher_runner(ctx, train, source.load(), feature_paths, next(batches(1)), source.setting))
        return runners[0]

    # The rows of every step are keyed with the layout (``stored_key``): a cache built for fewer
    # steps per epoch is another cache, never one read past its end.
    stream = teacher_key(ctx, source.kind, source.spec, source.weights_key()).with_parts(
        train_rows=rows, seed=ctx.seed, batch_size=train.batch_size, features=feature_paths,
        output_topk=recipe.teacher.cache_topk)
    if transfer is not None:  # only then: the caches of runs without a transfer set keep their keys
        stream = stream.with_parts(transfer=transfer.key())

    def key_for(setting: InferenceSetting) -> CacheKey:
        return stream.with_parts(teacher_inference=[setting.precision, setting.channels_last])

    epochs = cached_epochs(recipe, train.epochs)
    # The setting is part of the key, so "auto" is settled (by the main process, for all) first:
    # machines that choose differently make different caches. Under "auto" a cache that one of the
    # candidates already built is read rather than measuring again: two settings time within noise
    # of each other, and the other choice would build a second cache of the same teacher.
    source.setting = source.setting or fixed_setting(ctx, train)
    if source.setting is None:
        built = None
        if accelerator.is_main_process:
            built = built_setting(root, stage_candidates(ctx, train), key_for, layout, recipe.teacher.cache_dtype,
                                  epochs)
            built = built or runner().setting
        source.setting = agree(accelerator, built)
    key = key_for(source.setting)

    def teacher():
        loader = ctx.train_loader(train)
        loader.sampler.set_epoch(1)
        problem = check_replayable(lambda: to_device(next(iter(loader)), ctx.device), augment)
        if problem is not None:
            raise KDEngineError(f"{recipe.source}: teacher.cache: dataset '{recipe.data.name}': {problem}")
        run = runner()

        def forward(inputs):
            with accelerator.autocast():
                return run(inputs)
        return forward

    cache = None
    if accelerator.is_main_process:
        with located(recipe.source, "teacher.cache"):
            cache = TeacherCache.open(root, key, layout, recipe.teacher.cache_dtype)
            stats = cache.ensure(epochs, batches, teacher, feature_paths,
                                 group_rows=recipe.teacher.cache_batch_size or train.batch_size)
        if stats["built_epochs"] and ctx.progress:
            console.print(f"{plan.name}: teacher cache {cache.path} built ({stats['built_epochs']} epochs, "
                          f"{cache.size_bytes() / 2**20:.1f} MiB, {stats['seconds']:.1f} s)")
    accelerator.wait_for_everyone()
    if cache is None:
        cache = TeacherCache.open(root, key, layout, recipe.teacher.cache_dtype)
    return cache
