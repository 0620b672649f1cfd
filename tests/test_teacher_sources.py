"""Where the teacher comes from: used as its factory delivers it (``teacher.train = false``),
fine-tuned from pretrained weights (with frozen-backbone epochs), reused from an earlier run
(``--teacher-from``), and shared by the seeds of a multi-seed run. Every weight file is made here."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import kdengine
from kdengine import DataInfo, KDEngineError, RecipeError, load_recipe
from kdengine.cli import main
from kdengine.io.results import Results
from kdengine.reporting.summary import SeedSummary
from kdengine.train import run as run_module
from kdengine.train import stage as stage_module
from kdengine.train.freeze import BackboneFreeze

DIGITS = DataInfo("classification", 1, 10)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


@pytest.fixture
def recipe(tiny_recipe) -> dict:
    tiny_recipe["data"]["params"].update(val_size=64, test_size=64)
    tiny_recipe["train"]["baseline"] = False
    return tiny_recipe


@pytest.fixture
def pretrained_file(tmp_path):
    """Pretrained weights for timm's tiny test_resnet on the digits (one channel, ten classes)."""
    import timm

    torch.manual_seed(1)
    model = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    path = tmp_path / "pretrained.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def pretrained_teacher(path, **teacher) -> dict:
    return {"name": "timm", "params": {"model": "test_resnet", "pretrained_file": str(path)}, **teacher}


@pytest.fixture
def trainings(monkeypatch) -> list[str]:
    """The stages that train_stage trained, in order."""
    names: list[str] = []
    real = run_module.train_stage

    def spy(ctx, plan, *args, **kwargs):
        names.append(plan.name)
        return real(ctx, plan, *args, **kwargs)

    monkeypatch.setattr(run_module, "train_stage", spy)
    return names


# ------------------------------------------------------------------------ train = false


def test_untrained_teacher_is_evaluated_never_optimised(recipe, pretrained_file, tmp_path, optimised):
    recipe["teacher"] = pretrained_teacher(pretrained_file, train=False)
    results = kdengine.run(recipe, output_dir=tmp_path, progress=False)
    teacher = results.stage("teacher")
    assert teacher.trained is False and teacher.origin == "pretrained" and teacher.history == []
    assert optimised == [results.stage("distilled").params]  # the student's only
    assert teacher.test_best and teacher.best
    row = next(line for line in kdengine.table(results).splitlines() if line.startswith("| teacher "))
    assert "pretrained, not trained" in row
    # Scored again from the run folder, the teacher is built again with the same weights.
    again = kdengine.evaluate(results.run_dir, stages=["teacher"])
    assert again.stages[0].metrics == teacher.test_best


def test_train_false_accepts_no_fine_tuning_options(recipe, pretrained_file):
    recipe["teacher"] = pretrained_teacher(pretrained_file, train=False, freeze_backbone_epochs=1)
    with pytest.raises(RecipeError, match="teacher.freeze_backbone_epochs: .*not trained .*train = false"):
        load_recipe(recipe)
    recipe["teacher"] = pretrained_teacher(pretrained_file)
    loaded = load_recipe(recipe, overrides=["teacher.train=false"])
    assert loaded.teacher.train is False and not loaded.teacher.trains
    assert loaded.teacher_train() == loaded.train
    assert load_recipe(recipe, overrides=["teacher.train=true"]).teacher.train is None


def test_third_party_teacher_with_bundled_weights(third_party, recipe, tmp_path, monkeypatch):
    from kdengine_toy import BundledMLP

    taught_by = []
    real = run_module.InlineTeacher

    def spy(model):
        taught_by.append(model)
        return real(model)

    monkeypatch.setattr(run_module, "InlineTeacher", spy)
    recipe["teacher"] = {"name": "toy.bundled_mlp", "params": {"hidden": 16}, "train": False}
    recipe["student"] = {"name": "toy.mlp", "params": {"hidden": 8}}
    results = kdengine.run(recipe, output_dir=tmp_path, progress=False)
    teacher = results.stage("teacher")
    assert teacher.origin == "pretrained" and teacher.trained is False
    bundled = BundledMLP({"hidden": 16}).build(DIGITS).state_dict()
    assert len(taught_by) == 1
    used = taught_by[0].state_dict()
    assert all(torch.equal(used[k].cpu(), v) for k, v in bundled.items())
    assert "pretrained, not trained" in kdengine.table(results)


def test_cache_of_a_delivered_teacher_is_keyed_by_its_weights(third_party, recipe, tmp_path):
    recipe["teacher"] = {"name": "toy.bundled_mlp", "params": {"hidden": 16}, "train": False, "cache": True,
                         "cache_dir": str(tmp_path / "cache")}
    recipe["student"] = {"name": "toy.mlp", "params": {"hidden": 8}}
    built = kdengine.cache_teacher(recipe, progress=False, output_dir=tmp_path)  # before any student trains
    assert len(built) == 1 and built[0].missing(recipe["train"]["epochs"]) == []
    kdengine.run(recipe, output_dir=tmp_path, progress=False)  # the same weights: the same cache
    caches = lambda: [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()]  # noqa: E731 (scores are files)
    assert caches() == [built[0].path.name]
    recipe["teacher"]["params"]["release"] = 2  # other bundled weights: another cache
    kdengine.run(recipe, output_dir=tmp_path, progress=False)
    assert len(caches()) == 2
    assert len(list((tmp_path / "cache").glob("scores-*.json"))) == 2  # and their own scores


# ------------------------------------------------------------------------ fine-tuning


@pytest.fixture
def optimised(monkeypatch) -> list[int]:
    """How many parameter values each optimizer built by a stage was given."""
    sizes: list[int] = []
    real = stage_module.build_optimizer

    def spy(params, spec, **options):
        params = list(params.parameters() if isinstance(params, torch.nn.Module) else params)
        sizes.append(sum(p.numel() for p in params if p.requires_grad))
        return real(params, spec, **options)

    monkeypatch.setattr(stage_module, "build_optimizer", spy)
    return sizes


def test_fine_tuned_teacher_is_labelled_and_its_backbone_frozen_first(recipe, pretrained_file, tmp_path, optimised):
    recipe["teacher"] = pretrained_teacher(pretrained_file, freeze_backbone_epochs=1,
                                           train={"epochs": 1, "optimizer": {"name": "sgd", "lr": 0.01}})
    results = kdengine.run(recipe, output_dir=tmp_path, progress=False)
    assert optimised[0] == results.stage("teacher").params  # the backbone too, for the epochs after
    assert results.stage("teacher").origin == "fine-tuned" and results.stage("teacher").trained
    assert "| teacher (fine-tuned from pretrained) |" in kdengine.table(results)
    pretrained = load_file(str(pretrained_file))
    tuned = load_file(f"{results.run_dir}/checkpoints/teacher/last.safetensors")
    body = [k for k in pretrained if not k.startswith("fc.")]
    assert all(torch.equal(tuned[k], pretrained[k]) for k in body)  # weights and batch-norm statistics
    assert not torch.equal(tuned["fc.weight"], pretrained["fc.weight"])


def test_a_teacher_trained_from_scratch_is_not_called_fine_tuned(recipe):
    from kdengine.plugins.catalog import get_catalog

    spec = load_recipe(recipe).teacher
    assert not get_catalog().get("teacher", spec.name)(spec.params).starts_pretrained()


def test_backbone_freeze_releases_the_backbone_after_its_epochs():
    import timm

    from kdengine.recipe import SGDSpec
    from kdengine.train.optim import build_optimizer

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10, in_chans=1).train()
    optimizer = build_optimizer(model.parameters(), SGDSpec(lr=0.1, weight_decay=1e-3))
    freeze = BackboneFreeze(model, 2, "recipe.toml: teacher")

    def step():
        before = model.conv1[0].weight.detach().clone(), model.fc.weight.detach().clone()
        optimizer.zero_grad()
        model(torch.randn(4, 1, 8, 8)).logsumexp(1).mean().backward()
        optimizer.step()
        return [not torch.equal(b, a) for b, a in zip(before, (model.conv1[0].weight, model.fc.weight))]

    freeze.start_epoch(1)
    assert not model.conv1[0].weight.requires_grad and model.fc.weight.requires_grad
    assert not model.bn1.training and model.training
    stats = model.bn1.running_mean.clone()
    assert step() == [False, True]  # only the head moves; weight decay spares the backbone too
    assert torch.equal(model.bn1.running_mean, stats)
    model.train()
    freeze.start_epoch(3)
    assert model.conv1[0].weight.requires_grad and model.bn1.training
    assert step() == [True, True]


def test_backbone_freeze_needs_a_head_and_one_process():
    headless = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(KDEngineError, match="recipe.toml: teacher: freeze_backbone_epochs: cannot find the classifier"):
        BackboneFreeze(headless, 1, "recipe.toml: teacher")
    import timm

    with pytest.raises(KDEngineError, match="one process only"):
        BackboneFreeze(timm.create_model("test_resnet"), 1, "recipe.toml: teacher", num_processes=2)
    BackboneFreeze(headless, 0, "recipe.toml: teacher")  # no frozen epochs: nothing to find


def test_freeze_epochs_cannot_exceed_the_teachers_epochs(recipe, pretrained_file):
    recipe["teacher"] = pretrained_teacher(pretrained_file, freeze_backbone_epochs=3, train={"epochs": 2})
    with pytest.raises(RecipeError, match="freeze_backbone_epochs: 3 is more than the teacher's 2 epochs"):
        load_recipe(recipe)


# ------------------------------------------------------------------------ --teacher-from


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One finished run whose teacher stage was trained (shared by the --teacher-from tests)."""
    from conftest import TINY_RECIPE

    base = copy.deepcopy(TINY_RECIPE)
    base["data"]["params"].update(val_size=64, test_size=64)
    base["train"]["baseline"] = False
    root = tmp_path_factory.mktemp("teacher-from")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    results = kdengine.run(base, output_dir=root, progress=False)
    torch.set_num_threads(before)
    return base, results


def test_teacher_from_reuses_the_runs_teacher(finished_run, tmp_path, trainings, capsys):
    base, first = finished_run
    recipe_file = tmp_path / "tiny.json"
    recipe_file.write_text(json.dumps(base))
    code = main(["run", str(recipe_file), "--teacher-from", first.run_dir, "--output-dir", str(tmp_path),
                 "--no-progress"])
    assert code == 0
    assert trainings == ["distilled"]  # the teacher is not trained again
    out = capsys.readouterr().out
    again = Results.load(next(tmp_path.glob("tiny-*/results.json")))
    teacher, original = again.stage("teacher"), first.stage("teacher")
    assert teacher.trained is False and teacher.origin == "checkpoint"
    assert teacher.best == original.best and teacher.test_best == original.test_best
    assert teacher.checkpoint.endswith("checkpoints/teacher/best.safetensors")
    assert "loaded" in out


def test_teacher_from_a_run_that_did_not_train_it_is_refused(finished_run, tmp_path):
    base, first = finished_run
    second = kdengine.run(base, teacher_from=first.run_dir, output_dir=tmp_path, progress=False)
    with pytest.raises(KDEngineError, match=r"did not train its teacher: it was loaded from .*best.safetensors"):
        kdengine.run(base, teacher_from=second.run_dir, output_dir=tmp_path, progress=False)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.mark.parametrize("case", ["missing", "unfinished", "other-architecture", "multi-seed", "with-checkpoint"])
def test_bad_teacher_from_exits_2_with_one_line(case, finished_run, tmp_path, capsys, trainings):
    base, first = finished_run
    recipe = copy.deepcopy(base)
    folder = tmp_path / "run"
    folder.mkdir()
    if case == "missing":
        folder = tmp_path / "nowhere"
        expected = "not a run folder"
    elif case == "unfinished":
        (folder / "recipe.json").write_text((first_dir(first) / "recipe.json").read_text())
        results = Results.load(first_dir(first) / "results.json")
        results.complete = False
        results.save(folder / "results.json")
        expected = "the run has not finished"
    elif case == "other-architecture":
        folder = first_dir(first)
        recipe["teacher"]["params"]["width_mult"] = 0.5
        expected = "its teacher is torchvision(model=mobilenet_v2, width_mult=0.25, cifar_stem=True), this recipe's"
    elif case == "multi-seed":
        (folder / "summary.json").write_text("{}")
        expected = "a multi-seed run folder"
    else:
        folder = first_dir(first)
        recipe["teacher"]["checkpoint"] = str(folder / "checkpoints" / "teacher" / "best.safetensors")
        expected = "teacher.checkpoint: give either teacher.checkpoint or --teacher-from"
    recipe_file = tmp_path / "tiny.json"
    recipe_file.write_text(json.dumps(recipe))
    assert main(["run", str(recipe_file), "--teacher-from", str(folder), "--output-dir", str(tmp_path)]) == 2
    line = _error_line(capsys)
    assert line.startswith("error: ") and expected in line
    assert trainings == []


def test_seeds_score_a_checkpoint_teacher_once(finished_run, tmp_path, trainings, monkeypatch):
    """Its weights and the splits do not change with the seed: the later seeds take its scores."""
    base, first = finished_run
    recipe = copy.deepcopy(base)
    recipe["teacher"]["checkpoint"] = str(first_dir(first) / "checkpoints" / "teacher" / "best.safetensors")
    scored, evaluate = [], run_module.evaluate_given_teacher
    monkeypatch.setattr(run_module, "evaluate_given_teacher", lambda *a, **k: scored.append(1) or evaluate(*a, **k))
    summary = kdengine.run(recipe, seeds=[0, 1], output_dir=tmp_path, progress=False)
    assert len(scored) == 1 and trainings == ["distilled", "distilled"]
    root = tmp_path / Path(summary.run_dir).name
    runs = [Results.load(root / f"seed-{s}" / "results.json") for s in (0, 1)]
    once, later = runs[0].stage("teacher"), runs[1].stage("teacher")
    assert once.shared_from_seed is None and later.shared_from_seed == 0 and later.origin == "checkpoint"
    assert later.test_best == once.test_best == first.stage("teacher").test_best
    assert summary.teacher_note.endswith("shared by seeds 0, 1, scored once, with seed 0.")
    assert "loaded, shared from seed 0" in kdengine.table(runs[1])


def first_dir(results: Results):
    from pathlib import Path

    return Path(results.run_dir)


# ------------------------------------------------------------------------ seeds


@pytest.fixture
def toy_recipe(third_party, recipe) -> dict:
    recipe["teacher"] = {"name": "toy.mlp", "params": {"hidden": 16}}
    recipe["student"] = {"name": "toy.mlp", "params": {"hidden": 8}}
    return recipe


def test_seeds_share_one_teacher_trained_with_the_first(toy_recipe, tmp_path, trainings):
    summary = kdengine.run(toy_recipe, seeds=[0, 1, 2], output_dir=tmp_path, progress=False)
    assert trainings.count("teacher") == 1 and trainings.count("distilled") == 3
    assert summary.teacher_note == "One teacher, trained with seed 0, shared by seeds 0, 1, 2."
    root = tmp_path / summary.run_dir.split("/")[-1]
    runs = [Results.load(root / f"seed-{s}" / "results.json") for s in (0, 1, 2)]
    first = runs[0].stage("teacher")
    assert first.trained and first.shared_from_seed is None
    for later in runs[1:]:
        teacher = later.stage("teacher")
        assert teacher.shared_from_seed == 0 and teacher.trained is False
        assert teacher.test_best == first.test_best and teacher.best == first.best
        assert f"{first.best_epoch}, shared from seed 0" in kdengine.table(later)
    assert summary.stage("teacher").test_best["top1"].std == 0.0
    table = kdengine.table(SeedSummary.model_validate_json((root / "summary.json").read_text()))
    assert "One teacher, trained with seed 0, shared by seeds 0, 1, 2." in table
    # A shared seed's run finishes like any other: its folder can teach a later run too.
    recorded = load_recipe(root / "seed-1" / "recipe.json")
    assert recorded.teacher.checkpoint == root.resolve() / "seed-0" / "checkpoints" / "teacher" / "best.safetensors"


def test_per_seed_teachers(toy_recipe, tmp_path, trainings):
    toy_recipe["teacher"]["per_seed"] = True
    summary = kdengine.run(toy_recipe, seeds=[0, 1, 2], output_dir=tmp_path, progress=False)
    assert trainings.count("teacher") == 3
    assert summary.teacher_note == "One teacher per seed."
    assert "One teacher per seed." in kdengine.table(summary)
