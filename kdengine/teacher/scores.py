"""A given teacher's val and test scores, remembered next to the teacher-output cache.

A teacher the run does not train (a checkpoint, or weights as its factory delivers them) scores the
same in every run on the same data: its weights, the data and its splits, the metrics, and the
precision, memory format and batch it is evaluated in fix the numbers. With ``teacher.cache = true``
the first run writes them under the cache root (``scores-<key>.json``), and each later run on that
data (another student, a seed run in a process of its own) reads them instead of evaluating the
teacher again: on a CPU, evaluating a large teacher can take longer than training a small student
from its cache.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdengine.io.atomic import atomic_write_text
from kdengine.io.fingerprint import file_sha256
from kdengine.teacher.cache import tensor_digest
from kdengine.teacher.cached import default_cache_root
from kdengine.teacher.keys import CacheKey, teacher_key

if TYPE_CHECKING:
    from kdengine.recipe.stages import StagePlan
    from kdengine.train.context import RunContext

FORMAT = 1


def score_key(ctx: "RunContext", plan: "StagePlan", weights_key: str) -> CacheKey:
    """What fixes a given teacher's scores in a run: the teacher and its data (with the code
    versions of the metrics' plugins too), the metrics and how it is evaluated."""
    recipe, train = ctx.recipe, plan.train
    metrics = [("metric", metric.name) for metric in recipe.metric]
    return teacher_key(ctx, plan.role, plan.spec, weights_key, metrics).with_parts(
        metrics=[metric.model_dump(mode="json") for metric in recipe.metric],
        monitor_split=recipe.train.monitor_split, precision=train.mixed_precision,
        channels_last=train.channels_last, eval_batch_size=train.eval_batch_size,
        num_processes=ctx.accelerator.num_processes)


def scores_memo(ctx: "RunContext", plan: "StagePlan", teacher) -> Path | None:
    """Where a given teacher's scores are kept beside its output cache (None without
    ``teacher.cache``): keyed by its checkpoint's hash, or by ``teacher``'s weights without one."""
    recipe, checkpoint = ctx.recipe, plan.spec.checkpoint
    if not recipe.teacher.cache:
        return None
    weights_key = file_sha256(Path(checkpoint)) if checkpoint is not None else tensor_digest(teacher)
    return scores_file(default_cache_root(recipe, ctx.folder.path.parent), score_key(ctx, plan, weights_key))


def scores_file(root: Path, key: CacheKey) -> Path:
    """Where the scores for ``key`` live under the cache root ``root``."""
    return Path(root) / f"scores-{key.with_parts(scores_format=FORMAT).digest()}.json"


@dataclass
class TeacherScores:
    monitored: dict[str, float]  # on the monitor split (val)
    test: dict[str, float]
    params: int  # the teacher's parameter count, for its record without loading it


def read_scores(file: Path) -> TeacherScores | None:
    """The scores stored in ``file``; None when it is missing or unreadable (a damaged file is only
    a missed shortcut: the teacher is evaluated again and the file rewritten)."""
    try:
        stored = json.loads(Path(file).read_text(encoding="utf-8"))
        return TeacherScores({k: float(v) for k, v in stored["monitored"].items()},
                             {k: float(v) for k, v in stored["test"].items()}, int(stored["params"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_scores(file: Path, scores: TeacherScores, teacher: str) -> None:
    Path(file).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(file), json.dumps({"format": FORMAT, "teacher": teacher, **asdict(scores)}, indent=2))
