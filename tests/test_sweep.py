"""kdengine sweep: a width sweep on tiny digits models, one teacher (trained once) and one
teacher-output cache (built once) for every point, sweep.json / sweep.md / sweep.png, a resume
after a kill that trains no finished point again, bad grids refused before anything trains, and a
progressive chain's generation as the teacher."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

import kdengine
from conftest import TINY_RECIPE
from kdengine.cli import main
from kdengine.errors import KDEngineError
from kdengine.recipe import load_recipe
from kdengine.io.results import Results
from kdengine.reporting.sweep_results import SweepResult
from kdengine.teacher.cache import TeacherCache
from kdengine.api.reuse import teacher_from_stage
from kdengine.tools.grid import Axis, grid_points, parse_grid, point_recipes, split_values
from kdengine.train import run as run_module
from kdengine.train.stage import EpochKeeper

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")

#: Quick measurements: the tests check what is recorded, never how fast anything is.
FAST = {"latency_runs": 2, "throughput_batch": 4, "calibration_images": 32}
WIDTHS = "student.params.width_mult=0.35,0.25"


def mobilenet(width: float) -> dict:
    return {"name": "torchvision", "params": {"model": "mobilenet_v2", "width_mult": width, "cifar_stem": True}}


def sweep_recipe(**train) -> dict:
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["run"]["name"] = "sweep"
    recipe["data"]["params"].update(train_size=64, val_size=64, test_size=64)
    recipe["teacher"] = {**mobilenet(0.5), "cache": True}
    recipe["train"].update(max_steps_per_epoch=1, **train)
    return recipe


def count_stages(monkeypatch) -> list[tuple[str, str]]:
    """(point folder, stage) of every stage that starts training."""
    calls, original = [], run_module.train_stage

    def counted(ctx, plan, *args, **kwargs):
        calls.append((ctx.folder.path.name, plan.name))
        return original(ctx, plan, *args, **kwargs)

    monkeypatch.setattr(run_module, "train_stage", counted)
    return calls


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A two-point width sweep killed in the second point's scratch stage, then resumed from the
    command line."""
    out = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as patch:
        stages = count_stages(patch)
        builds, build = [], TeacherCache._build_epoch

        def counted_build(self, epoch, *args, **kwargs):
            builds.append((self.path, epoch))
            return build(self, epoch, *args, **kwargs)

        patch.setattr(TeacherCache, "_build_epoch", counted_build)
        keep = EpochKeeper.keep

        def killed(self, record, *args):
            keep(self, record, *args)
            if self.ctx.folder.path.name.startswith("02-") and self.plan.name == "scratch":
                raise RuntimeError("killed")

        patch.setattr(EpochKeeper, "keep", killed)
        with pytest.raises(RuntimeError, match="killed"):
            kdengine.sweep(sweep_recipe(), [WIDTHS], output_dir=out, quantize="int8", progress=False, **FAST)
        patch.setattr(EpochKeeper, "keep", keep)
        root = next(out.glob("*-sweep"))
        before_resume = list(stages)
        interrupted = SweepResult.load(root / "sweep.json")
        assert main(["sweep", "--resume", str(root)]) == 0  # with progress: its per-point line too
    return SimpleNamespace(root=root, stages=stages, before_resume=before_resume, builds=builds,
                           interrupted=interrupted, result=SweepResult.load(root / "sweep.json"))


def test_each_point_trains_once_and_the_teacher_once_even_across_a_resume(swept):
    first, second = (p.label for p in swept.result.points)
    assert [p.status for p in swept.interrupted.points] == ["done", "running"]
    assert swept.before_resume == [(first, "teacher"), (first, "scratch"), (first, "distilled"), (second, "scratch")]
    # The resume continues the second point's run (its scratch stage from its saved state) and
    # leaves the finished first point alone.
    assert swept.stages[len(swept.before_resume):] == [(second, "scratch"), (second, "distilled")]
    assert [stage for _, stage in swept.stages].count("teacher") == 1


def test_points_share_one_teacher_and_one_cache(swept):
    first, second = (swept.root / p.run_dir for p in swept.result.points)
    weights = (first / "checkpoints" / "teacher" / "best.safetensors").resolve()
    later = json.loads((second / "recipe.json").read_text())["teacher"]
    assert Path(later["checkpoint"]) == weights
    assert Path(swept.result.teacher.checkpoint) == weights
    assert not Results.load(second / "results.json").stage("teacher").trained
    # One epoch of teacher outputs, built once by the first point, in the sweep's own cache folder.
    caches = [p for p in (swept.root / "teacher-cache").iterdir() if p.is_dir()]  # scores are files
    assert len(caches) == 1 and len(swept.builds) == 1 and swept.builds[0][0].resolve() == caches[0].resolve()
    assert Path(later["cache_dir"]) == (swept.root / "teacher-cache").resolve()


def test_sweep_records_every_point_and_draws_the_pareto_figure(swept):
    result = swept.result
    assert result.complete and result.monitor == "top1" and result.split == "test"
    assert result.command.startswith("kdengine sweep") and "--quantize=int8" in result.command
    assert [a.key for a in result.grid] == ["student.params.width_mult"]
    wide, narrow = result.points
    assert [wide.values, narrow.values] == [{"student.params.width_mult": 0.35}, {"student.params.width_mult": 0.25}]
    assert result.teacher.params > wide.params > narrow.params > 0 and result.teacher.origin == "trained"
    for point in result.points:
        results = Results.load(swept.root / point.run_dir / "results.json")
        assert point.metric == results.stage("distilled").test_best["top1"]
        assert point.scratch_metric == results.stage("scratch").test_best["top1"]
        assert 0 <= point.metric <= 1 and 0 <= point.int8_metric <= 1 and set(point.metrics) == {"top1", "top5"}
        assert set(point.latency_ms) == {"fp32", "int8"} and all(ms > 0 for ms in point.latency_ms.values())
        assert (swept.root / point.onnx).is_file() and (swept.root / point.onnx).suffix == ".onnx"
    first = Results.load(swept.root / result.points[0].run_dir / "results.json")
    assert result.teacher.metric == first.stage("teacher").test_best["top1"]  # the teacher trained once
    table = (swept.root / "sweep.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert [cell.strip() for cell in rows[0].split("|")[1:4]] == ["point", "student.params.width_mult", "params"]
    assert "top1 scratch" in rows[0] and "int8 ms" in rows[0]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["teacher", wide.label, narrow.label]
    assert "trained once" in table
    assert (swept.root / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def recipe_file(tmp_path) -> Path:
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(sweep_recipe()))
    return path


@pytest.mark.parametrize("grid, says", [
    (["student.params.widht_mult=0.5,0.25"], "student.params.widht_mult: extra inputs are not permitted"),
    (["student.params.width_mult=0.5,-1"], "student.params.width_mult: input should be greater than 0"),
    (["teacher.params.width_mult=0.5,1.0"], "--grid teacher.params.width_mult: cannot be an axis"),
    (["data.params.image_size=8,16"], "--grid data.params.image_size: cannot be an axis"),
    (["run.seed=0,1"], "--grid run.seed: cannot be an axis"),
    (["train.optimizer.lr=0.05,0.1"], "--grid train.optimizer.lr: changes how the teacher trains"),
    (["student.params.width_mult=0.5,0.5"], "the value 0.5 is given twice"),
    (["student.params.width_mult=1", "train.epochs=1,2", "train.batch_size=8"], "at most 2 axes"),
])
def test_a_bad_grid_stops_before_anything_trains(recipe_file, tmp_path, capsys, grid, says):
    out = tmp_path / "out"
    argv = ["sweep", str(recipe_file), "--output-dir", str(out), "--no-progress"]
    assert main(argv + [arg for g in grid for arg in ("--grid", g)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err.lower() and "Traceback" not in err
    assert not out.exists()


def test_axes_that_leave_the_teacher_as_it_is_are_accepted():
    recipe = sweep_recipe()
    recipe["teacher"]["train"] = {"optimizer": {"name": "sgd", "lr": 0.05}}
    base = load_recipe(recipe)
    # The teacher has its own lr; cross_entropy is its only term, whatever its weight.
    for grid in (["train.optimizer.lr=0.1,0.2"], ["loss[1].weight=0.1,0.3", "loss[0].params.temperature=2.0,4.0"],
                 ["train.baseline=true,false"]):
        axes = parse_grid(grid)
        points = grid_points(axes)
        assert len(point_recipes(base, axes, points)) == len(points)
    axes = parse_grid(["student.params.width_mult=1.0,0.5", "train.epochs=1,2"])
    assert [p.label for p in grid_points(axes)] == ["01-width_mult-1.0_epochs-1", "02-width_mult-1.0_epochs-2",
                                                     "03-width_mult-0.5_epochs-1", "04-width_mult-0.5_epochs-2"]
    with pytest.raises(KDEngineError, match="--grid train.epochs: changes how the teacher trains"):
        point_recipes(base, axes, grid_points(axes))
    with pytest.raises(KDEngineError, match="also given by --set"):
        parse_grid(["train.epochs=1,2"], overrides=["train.epochs=3"])


def test_grid_values_are_parsed_like_set_values():
    assert split_values("[1, 2],{ a = 1, b = 2 },'x,y',0.5") == ["[1, 2]", "{ a = 1, b = 2 }", "'x,y'", "0.5"]
    assert grid_points([Axis.parse("train.optimizer={ name = 'adam' },{ name = 'sgd' }")])[0].values == {
        "train.optimizer": {"name": "adam"}}


GEN2 = mobilenet(0.35)


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory) -> Path:
    recipe = sweep_recipe(baseline=False)
    recipe["run"]["name"] = "chain"
    recipe["teacher"] = mobilenet(0.5)
    recipe.pop("student")
    recipe["generation"] = [{"name": "gen2", "student": GEN2}]
    results = kdengine.run(recipe, output_dir=tmp_path_factory.mktemp("chain"), progress=False)
    return Path(results.run_dir)


def test_a_chain_generation_teaches_every_point(chain_run, tmp_path, monkeypatch):
    stages = count_stages(monkeypatch)
    recipe = sweep_recipe(baseline=False)
    recipe["teacher"] = mobilenet(0.25)  # another model: gen2's replaces it (no loss term taps its layers)
    path = tmp_path / "from-chain.json"
    path.write_text(json.dumps(recipe))
    argv = ["sweep", str(path), "--grid", "student.params.width_mult=0.25", "--teacher-from", str(chain_run),
            "--teacher-stage", "gen2", "--output-dir", str(tmp_path / "out"), "--no-progress", "--latency-runs", "2"]
    assert main(argv) == 0
    root = next((tmp_path / "out").glob("*-sweep"))
    result = SweepResult.load(root / "sweep.json")
    assert result.complete and result.measure.quantize is None and set(result.points[0].latency_ms) == {"fp32"}
    assert result.teacher.origin == "checkpoint" and "width_mult=0.35" in result.teacher.model
    assert "stage 'gen2'" in result.teacher_note and "is replaced by" in result.teacher_note
    teacher = json.loads((root / result.points[0].run_dir / "recipe.json").read_text())["teacher"]
    assert teacher["params"] == GEN2["params"]
    assert Path(teacher["checkpoint"]) == (chain_run / "checkpoints" / "gen2" / "best.safetensors").resolve()
    assert [stage for _, stage in stages] == ["distilled"]  # the teacher is loaded, not trained


def test_teacher_stage_is_found_by_name_or_generation_and_checked(chain_run):
    same = load_recipe(sweep_recipe())  # its teacher is the chain's teacher (generation 1)
    recipe, note = teacher_from_stage(same, chain_run, "gen1")
    assert note is None and recipe.teacher.checkpoint.parts[-3:] == ("checkpoints", "teacher", "best.safetensors")
    with pytest.raises(KDEngineError, match=r"no such stage; its stages: teacher \(gen1\), gen2 \(gen2\)"):
        teacher_from_stage(same, chain_run, "gen9")
    # A loss term that taps the recipe's teacher layers needs that teacher, not gen2's model.
    tapping = sweep_recipe()
    tapping["teacher"] = mobilenet(0.25)
    tapping["loss"] = [{"name": "fitnets", "params": {"student_layer": "features.3", "teacher_layer": "features.3"}},
                       {"name": "cross_entropy"}]
    with pytest.raises(KDEngineError, match=r"tap the teacher's layers \(features\.3\)"):
        teacher_from_stage(load_recipe(tapping), chain_run, "gen2")
    with pytest.raises(KDEngineError, match="--teacher-stage names a stage"):
        kdengine.sweep(sweep_recipe(), [WIDTHS], teacher_stage="gen2")
