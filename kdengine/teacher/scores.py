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

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kdengine.io.atomic import atomic_write_text

if TYPE_CHECKING:
    from kdengine.recipe.stages import StagePlan
    from kdengine.train.context import RunContext

FORMAT = 1


def score_parts(ctx: "RunContext", plan: "StagePlan", weights_key: str) -> dict[str, Any]:
    """What fixes a given teacher's scores in a run: its weights (``weights_key``), the data, the
    metrics and how it is evaluated."""
    recipe, train = ctx.recipe, plan.train
    fingerprint = getattr(ctx.provider, "fingerprint", None)
    return {
        "teacher_weights": weights_key,
        "data": recipe.data.model_dump(mode="json"),
        "data_fingerprint": fingerprint() if callable(fingerprint) else None,
        "metrics": [metric.model_dump(mode="json") for metric in recipe.metric],
        "monitor_split": recipe.train.monitor_split,
        "precision": train.mixed_precision, "channels_last": train.channels_last,
        "eval_batch_size": train.eval_batch_size, "num_processes": ctx.accelerator.num_processes,
    }


def scores_file(root: Path, parts: dict[str, Any]) -> Path:
    """Where the scores for ``parts`` (what fixes them) live under the cache root ``root``."""
    text = json.dumps({"format": FORMAT, "torch": torch.__version__, **parts}, sort_keys=True, default=str)
    return Path(root) / f"scores-{hashlib.sha256(text.encode()).hexdigest()[:24]}.json"


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
