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

from accelerate.utils import slice_tensors
from torch import nn

from kdengine.errors import KDEngineError, located
from kdengine.io.fingerprint import file_sha256
from kdengine.io.state import rng_state, set_rng_state
from kdengine.reporting.progress import console
from kdengine.runtime.tensors import to_device
from kdengine.teacher.base import StepTeacher, TeacherSource
from kdengine.teacher.cache import Layout, TeacherCache, cache_folder, epochs_present, tensor_digest
from kdengine.teacher.keys import CacheKey, teacher_key
from kdengine.teacher.precision import InferenceSetting, agree, fixed_setting, stage_candidates, teacher_runner
from kdengine.teacher.replay import check_replayable
from kdengine.teacher.topk import topk_problem

if TYPE_CHECKING:
    from kdengine.recipe import ComponentSpec, Recipe
    from kdengine.train.setup import StageSetup


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


class CachedTeacher(TeacherSource):
    """Outputs read from the teacher-output cache, built first where epochs are missing; the
    teacher itself (``load()``) is only loaded to build them, or to key a teacher that has no
    weights file."""

    def __init__(self, weights_file: Path | None, load: Callable[[], nn.Module], kind: str, spec: "ComponentSpec"):
        #: The teacher's weights file (a trained stage's, a checkpoint), or None for a teacher as
        #: its factory delivers it.
        self.weights_file = Path(weights_file) if weights_file is not None else None
        #: The component that builds the teaching model ("teacher", or "student" for a generation
        #: that teaches the next) and its recipe entry: both are part of the cache's key.
        self.kind, self.spec = kind, spec
        self._load = load
        self._model: nn.Module | None = None
        self.cache: TeacherCache | None = None
        #: ``teacher.cache_views``: how many epochs of batches the cache holds (None: every epoch)
        self.views: int | None = None

    def weights_key(self) -> str:
        """The cache key's part for the teacher's weights: another teacher is another cache. A
        file is hashed as it is; a teacher without one is built and its state dict hashed."""
        if self.weights_file is not None:
            return file_sha256(self.weights_file)
        if self._model is None:
            self._model = self._load()  # kept for load(): a missing cache needs it next
        return tensor_digest(self._model)

    def load(self) -> nn.Module:
        model, self._model = self._model, None
        return model if model is not None else self._load()

    def start(self, setup: "StageSetup", first_inputs) -> None:
        ctx = setup.ctx
        self.device, self.feature_paths = ctx.device, setup.losses.teacher_paths
        self.views = ctx.recipe.teacher.cache_views
        rng = rng_state()  # building the cache (a teacher's init, ...) must not move the stage's generators
        self.open(setup, default_cache_root(ctx.recipe, ctx.folder.path.parent))
        self._model = None  # students train without the teacher in memory
        set_rng_state(rng)

    def data_epoch(self, epoch: int) -> int:
        return (epoch - 1) % self.views + 1 if self.views else epoch

    def step(self, epoch: int, step: int, process: int | None) -> StepTeacher:
        # ``epoch`` is a data epoch (``data_epoch``): the one whose batches the cache holds
        outputs = self.cache.lookup(epoch, step, process, self.feature_paths, self.device)
        return lambda inputs, rows: slice_tensors(outputs, rows)

    def open(self, setup: "StageSetup", root: Path) -> TeacherCache:
        """The stage's cache under ``root``, with every epoch the stage trains present: the main
        process builds what is missing from the stage's own input stream
        (:meth:`StageSetup.teacher_inputs`), so the cache holds the teacher's outputs on exactly
        the rows the student trains on."""
        ctx, plan = setup.ctx, setup.plan
        recipe, train, accelerator = ctx.recipe, plan.train, ctx.accelerator
        processes, rows, sizes = accelerator.num_processes, len(ctx.train_set), setup.sizes
        feature_paths, transfer = setup.losses.teacher_paths, setup.transfer
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
        problem = topk_problem(None, feature_paths) if recipe.teacher.cache_topk is not None else None
        if problem is not None:  # known before anything is built; a dense output shows at the first batch
            raise KDEngineError(f"{recipe.source}: {problem}")
        layout = Layout(tuple(size + (transfer.rows if transfer is not None else 0) for size in sizes), processes)

        runners = []  # the teacher, once loaded

        def runner():
            if not runners:
                first = next(setup.teacher_inputs(1))
                runners.append(teacher_runner(ctx, train, self.load(), feature_paths, first, self.setting))
            return runners[0]

        # The rows of every step are keyed with the layout (``stored_key``): a cache built for fewer
        # steps per epoch is another cache, never one read past its end.
        stream = teacher_key(ctx, self.kind, self.spec, self.weights_key()).with_parts(
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
        self.setting = self.setting or fixed_setting(ctx, train)
        if self.setting is None:
            built = None
            if accelerator.is_main_process:
                built = built_setting(root, stage_candidates(ctx, train), key_for, layout, recipe.teacher.cache_dtype,
                                      epochs)
                built = built or runner().setting
            self.setting = agree(accelerator, built)
        key = key_for(self.setting)

        def teacher():
            loader = setup.train_loader(1)
            problem = check_replayable(lambda: to_device(next(iter(loader)), ctx.device), setup.augment)
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
                stats = cache.ensure(epochs, setup.teacher_inputs, teacher, feature_paths,
                                     group_rows=recipe.teacher.cache_batch_size or train.batch_size)
            if stats["built_epochs"] and ctx.progress:
                console.print(f"{plan.name}: teacher cache {cache.path} built ({stats['built_epochs']} epochs, "
                              f"{cache.size_bytes() / 2**20:.1f} MiB, {stats['seconds']:.1f} s)")
        accelerator.wait_for_everyone()
        if cache is None:
            cache = TeacherCache.open(root, key, layout, recipe.teacher.cache_dtype)
        self.cache = cache
        return cache
