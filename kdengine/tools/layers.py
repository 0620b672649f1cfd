"""``kdengine layers``: the tappable layers of a recipe's teacher or student, with output shapes
(``kdengine validate --layers`` lists both, on the dry run's training batch).

Feature losses (FitNets, attention transfer, CRD, ...) name layers by module path; this lists the
paths a model really has and what each returns for one sample of the recipe's dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdengine.plugins.catalog import get_catalog
from kdengine.errors import KDEngineError, located
from kdengine.plugins.features import list_layers
from kdengine.recipe import load_recipe
from kdengine.recipe.stages import StagePlan, plan_stages


@dataclass(frozen=True)
class Layer:
    path: str
    module: str
    shape: tuple[int, ...]


def recipe_layers(source, role: str, overrides=(), input_shape: tuple[int, ...] | None = None,
                  stage: str | None = None) -> list[Layer]:
    """Every module of one recipe model that returns a tensor, in call order, for a batch of one:
    the teacher, a student, or (in a progressive chain) the student of the ``stage`` named."""
    if role not in ("student", "teacher"):
        raise KDEngineError(f"--role must be 'student' or 'teacher', not '{role}'")
    recipe = load_recipe(source, overrides=overrides)
    plan = pick_stage(recipe, role, stage)
    catalog = get_catalog()
    with located(recipe.source, "data"):
        provider = catalog.get("dataset", recipe.data.name)(recipe.data.params)
        provider.on_bad_sample = recipe.data.on_bad_sample
        info = provider.info()
        if input_shape is None:
            provider.check()
            data = provider.train_set()
            if len(data) == 0:
                raise KDEngineError(f"the train split of '{recipe.data.name}' is empty")
            sample = data[0][0][None]
        else:
            sample = torch.zeros(1, *input_shape)
    with located(recipe.source, plan.where):
        model = catalog.get(plan.role, plan.spec.name)(plan.spec.params).build(info)
    return model_layers(model, sample)


def pick_stage(recipe, role: str, stage: str | None) -> StagePlan:
    """The stage whose model is listed: ``stage`` if given, else the teacher or the first student
    (in a chain, the first generation)."""
    plans = plan_stages(recipe)
    if stage is not None:
        named = {plan.name: plan for plan in plans}
        if stage not in named:
            raise KDEngineError(f"{recipe.source}: --stage: no stage '{stage}'; this recipe has: {', '.join(named)}")
        return named[stage]
    return next(plan for plan in plans if plan.role == role)


def model_layers(model: torch.nn.Module, inputs: torch.Tensor) -> list[Layer]:
    """Every module of ``model`` that returns a tensor, in call order, with its output shape for
    ``inputs`` (the model is put in eval mode)."""
    model.eval()
    return [Layer(path, module, shape) for path, module, shape in list_layers(model, inputs)]


def format_layers(layers: list[Layer], indent: str = "") -> list[str]:
    width = max((len(layer.path) for layer in layers), default=4)
    type_width = max((len(layer.module) for layer in layers), default=4)
    lines = [f"{indent}{'path':<{width}}  {'module':<{type_width}}  output shape"]
    for layer in layers:
        lines.append(f"{indent}{layer.path:<{width}}  {layer.module:<{type_width}}  {tuple(layer.shape)}")
    return lines
