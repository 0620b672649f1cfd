"""The stages of a run, in order, planned from the recipe.

A plain recipe has three: ``teacher`` (trained, fine-tuned from pretrained weights, loaded, or
used as its factory delivers it), ``scratch`` (the student without the teacher, when
``train.baseline``), ``scratch-transfer`` (with ``train.baseline_transfer``: scratch on the labels
and on the transfer images with the teacher's hard labels) and ``distilled``. A progressive recipe has the teacher, then one
stage per ``[[generation]]``, each taught by an earlier stage, optionally each with its scratch
baseline (``<name>-scratch``) and a ``direct`` stage: the last generation's student distilled
straight from the teacher, to show whether the intermediate generations help.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kdengine.recipe import ComponentSpec, Recipe, TrainSpec


@dataclass(frozen=True)
class StagePlan:
    name: str
    role: Literal["teacher", "student"]
    spec: ComponentSpec
    #: Where the model is named in the recipe (for error messages).
    where: str
    train: TrainSpec
    #: The stage whose model teaches this one (None: trained on the labels alone).
    teacher: str | None = None
    #: Which weights of the teaching stage: its best epoch or its last.
    weights: Literal["best", "last"] = "best"
    #: Position in a progressive chain (the teacher is generation 1); None outside chains.
    generation: int | None = None
    #: Epochs at the start of the stage in which only the classifier head trains.
    freeze_backbone_epochs: int = 0
    #: The teacher only labels the transfer rows (its hard labels, for the label terms): the
    #: ``scratch-transfer`` baseline of ``train.baseline_transfer``.
    teacher_labels: bool = False


def plan_stages(recipe: Recipe) -> list[StagePlan]:
    chain = recipe.generation is not None
    stages = [StagePlan("teacher", "teacher", recipe.teacher, "teacher", recipe.teacher_train(),
                        generation=1 if chain else None,
                        freeze_backbone_epochs=recipe.teacher.freeze_backbone_epochs)]
    if not chain:
        if recipe.train.baseline:
            stages.append(StagePlan("scratch", "student", recipe.student, "student", recipe.train))
        if recipe.train.baseline_transfer:
            stages.append(StagePlan("scratch-transfer", "student", recipe.student, "student", recipe.train,
                                    teacher="teacher", teacher_labels=True))
        stages.append(StagePlan("distilled", "student", recipe.student, "student", recipe.train, teacher="teacher"))
        return stages
    previous = "teacher"
    for i, gen in enumerate(recipe.generation):
        train = gen.train.apply(recipe.train) if gen.train else recipe.train
        where = f"generation[{i}].student"
        if recipe.train.baseline:
            stages.append(StagePlan(f"{gen.name}-scratch", "student", gen.student, where, train))
        stages.append(StagePlan(gen.name, "student", gen.student, where, train,
                                teacher=gen.teacher or previous, weights=gen.weights, generation=i + 2))
        previous = gen.name
    if recipe.direct:
        last = stages[-1]
        stages.append(StagePlan("direct", "student", last.spec, last.where, last.train, teacher="teacher"))
    return stages
