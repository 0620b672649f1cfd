"""The transfer set (``[data.transfer]``): images the teacher alone labels join every step of the
taught stages; the label terms see the labelled rows only, the baselines never see them, and the
teacher-output cache holds their outputs like the train rows'."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

import kdengine
from kdengine import KDEngineError, LossContext
from kdengine.plugins.components import LossTerm
from kdengine.train.objective import StudentObjective

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_EDGE = {
    "run": {"name": "edge-transfer", "seed": 0},
    "data": {"name": "synthetic_edges", "params": {"size": 32, "train_size": 8, "val_size": 4, "test_size": 4}},
    "teacher": {"name": "unet", "params": {"encoder": "resnet18", "decoder_channels": [16, 16, 16, 16, 8]},
                "train": {"epochs": 1}},
    "student": {"name": "unet", "params": {"encoder": "mobilenet_v2", "decoder_channels": [16, 16, 16, 16, 8]}},
    "train": {"epochs": 2, "batch_size": 4, "optimizer": {"name": "adam", "lr": 3e-4}, "monitor": "dice"},
    "loss": [{"name": "weighted_bce", "weight": 0.5, "params": {"pos_weight": 10.0}},
             {"name": "sigmoid_mse", "weight": 0.5}],
    "metric": [{"name": "dice"}],
}


def photos(folder, count=3, size=(40, 48)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"photo{i}.png")
    return folder


def with_transfer(tmp_path, ratio=0.5, **extra):
    recipe = copy.deepcopy(TINY_EDGE)
    recipe["data"]["transfer"] = {"name": "photo_folder", "params": {"roots": [str(photos(tmp_path / "photos"))],
                                                                     "size": 32}, "ratio": ratio, **extra}
    return recipe


# --------------------------------------------------------------------------------------- the objective


class Rows(LossTerm):
    """Records the rows it sees (student output and targets)."""

    seen: list = []

    def forward(self, ctx: LossContext):
        type(self).seen.append((ctx.student.shape[0], ctx.targets.shape[0]))
        return ctx.student.float().mean() * 0


class TeacherRows(Rows):
    needs_teacher = True
    seen: list = []


def test_label_terms_see_the_labelled_rows_and_distillation_terms_every_row():
    objective = StudentObjective(torch.nn.Linear(3, 2), [Rows(), TeacherRows()], [])
    inputs, targets, teacher = torch.randn(6, 3), torch.zeros(4, dtype=torch.long), torch.randn(6, 2)
    objective(inputs, targets, teacher, {}, labelled=4)
    assert Rows.seen[-1] == (4, 4) and TeacherRows.seen[-1] == (6, 4)
    objective(inputs[:4], targets, teacher[:4], {})  # no transfer rows: everyone sees the batch
    assert Rows.seen[-1] == (4, 4) and TeacherRows.seen[-1] == (4, 4)


def test_a_distillation_term_that_reads_labels_sees_the_labelled_rows():
    from kdengine_classification.kd_methods.dkd import DecoupledKD as DKD

    assert DKD.reads_labels() and not TeacherRows.reads_labels() and Rows.reads_labels()
    ctx = LossContext(inputs=torch.randn(5, 3), targets=torch.tensor([0, 1]), student=torch.randn(5, 4),
                      teacher=torch.randn(5, 4), student_features={"a": torch.randn(5, 7)}, labelled=2)
    own = ctx.labelled_rows()
    assert own.student.shape[0] == own.teacher.shape[0] == own.student_features["a"].shape[0] == 2
    assert torch.equal(own.student, ctx.student[:2]) and own.labelled is None
    assert torch.isfinite(DKD()(ctx.labelled_rows()))


# --------------------------------------------------------------------------------------- the rows


def test_the_rows_of_a_step_are_a_function_of_seed_epoch_and_step_and_split_over_processes(tmp_path):
    from kdengine.plugins.catalog import get_catalog
    from kdengine.train.transfer import TransferRows

    provider = get_catalog().get("dataset", "photo_folder")({"roots": [str(photos(tmp_path / "p"))], "size": 16})
    rows = TransferRows(provider.train_set(), seed=0, rows=4, collate=provider.collate_fn(), name="photos")
    again = TransferRows(provider.train_set(), seed=0, rows=4, collate=provider.collate_fn(), name="photos")
    whole = rows.batch(1, 2)
    assert whole.shape == (4, 3, 16, 16) and torch.equal(whole, again.batch(1, 2))
    assert torch.equal(torch.cat([rows.batch(1, 2, p, 2) for p in (0, 1)]), whole)
    assert not torch.equal(rows.batch(2, 2), whole)  # another epoch, another draw
    draws = [index for step in range(3) for _, index in rows.draws(1, step)]  # 12 draws of 3 images
    assert sorted(draws) == [0] * 4 + [1] * 4 + [2] * 4


# --------------------------------------------------------------------------------------- runs


def steps_per_stage(monkeypatch, record):
    """``record(term_names, inputs, targets, labelled)`` of every training step, by stage."""
    import kdengine.train.run as run_module
    import kdengine.train.stage as stage_module

    seen: dict[str, list] = {}
    current = [""]
    real_step, real_stage = stage_module.train_step, stage_module.train_stage

    def step_spy(accelerator, objective, optimizer, schedule, train, weights, names, inputs, targets, teach, micro,
                 labelled=None):
        seen.setdefault(current[0], []).append(record(names, inputs, targets, labelled))
        return real_step(accelerator, objective, optimizer, schedule, train, weights, names, inputs, targets, teach,
                         micro, labelled=labelled)

    def stage_spy(ctx, plan, *args, **kwargs):
        current[0] = plan.name
        return real_stage(ctx, plan, *args, **kwargs)

    monkeypatch.setattr(stage_module, "train_step", step_spy)
    monkeypatch.setattr(run_module, "train_stage", stage_spy)
    return seen


def rows_per_stage(monkeypatch):
    """The rows of every student forward pass in training, by stage, and how many are labelled."""
    return steps_per_stage(monkeypatch, lambda names, inputs, targets, labelled: (inputs.shape[0], labelled))


def test_only_the_distilled_stage_trains_on_transfer_rows(tmp_path, monkeypatch):
    seen = rows_per_stage(monkeypatch)
    recipe = with_transfer(tmp_path, ratio=0.5)
    results = kdengine.run(recipe, progress=False, output_dir=tmp_path / "runs")
    assert set(seen) == {"teacher", "scratch", "distilled"}
    assert set(seen["teacher"]) == set(seen["scratch"]) == {(4, None)}  # the labels alone
    assert set(seen["distilled"]) == {(6, 4)}  # 4 labelled rows + 2 transfer rows each step
    assert all(np.isfinite(list(r.losses.values())).all() for r in results.stage("distilled").history)


@pytest.mark.parametrize("augment", ["crop_flip", "strong"])
def test_the_cache_holds_the_transfer_rows_and_teaches_as_the_teacher_does(tmp_path, augment):
    """Consistent teaching: the teacher's cached outputs are its outputs on the very views the
    student trains on, strongly augmented ones included (each view replayed for the cache)."""
    inline = with_transfer(tmp_path, ratio=0.5)
    inline["data"]["transfer"]["params"]["augment"] = augment
    inline["teacher"]["train"] = False
    inline["train"]["baseline"] = False
    cached = copy.deepcopy(inline)
    # float32 storage: the cached outputs are the inline ones exactly, so every epoch agrees
    cached["teacher"].update(cache=True, cache_dir=str(tmp_path / "cache"), cache_dtype="float32")
    first = kdengine.run(inline, progress=False, output_dir=tmp_path / "inline").stage("distilled")
    second = kdengine.run(cached, progress=False, output_dir=tmp_path / "cached").stage("distilled")
    for a, b in zip(first.history, second.history):
        assert a.losses == pytest.approx(b.losses, rel=1e-4), a.epoch
    without = copy.deepcopy(cached)
    del without["data"]["transfer"]
    kdengine.run(without, progress=False, output_dir=tmp_path / "plain")
    folders = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(folders) == 2  # the transfer rows are part of the key: another cache without them


def test_a_transfer_image_that_is_a_test_image_is_refused_naming_both(tmp_path):
    from kdengine.train.transfer import refuse_overlap

    class Held:
        def split_files(self, split):
            return [tmp_path / "photos" / "photo1.png"] if split == "test" else []

    recipe = with_transfer(tmp_path)
    copy_of_test = tmp_path / "copies"
    copy_of_test.mkdir()
    (copy_of_test / "renamed.png").write_bytes((tmp_path / "photos" / "photo1.png").read_bytes())
    with pytest.raises(KDEngineError, match=r"renamed.png is the test image .*photo1.png of 'bsds500'"):
        refuse_overlap([copy_of_test / "renamed.png"], Held(), "photo_folder", "bsds500")
    assert recipe  # the folder exists


def test_an_empty_photo_folder_and_a_transfer_with_a_memory_budget_are_clear_errors(tmp_path):
    from kdengine.errors import RecipeError

    recipe = with_transfer(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    recipe["data"]["transfer"]["params"]["roots"] = [str(empty)]
    with pytest.raises(KDEngineError, match=r"data.transfer: .*empty: no images"):
        kdengine.run(recipe, progress=False, output_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
    budget = with_transfer(tmp_path)
    budget["train"]["max_memory"] = "1GiB"
    with pytest.raises(RecipeError, match="data.transfer: a transfer set trains each batch in one pass"):
        kdengine.run(budget, progress=False, output_dir=tmp_path / "runs")


def test_validate_opens_the_transfer_set_too(tmp_path):
    from kdengine.tools.validate import dry_run

    recipe = with_transfer(tmp_path)
    assert dry_run(recipe).models
    recipe["data"]["transfer"]["params"]["roots"] = [str(tmp_path / "missing")]
    with pytest.raises(KDEngineError, match=r"data.transfer: .*missing: photo folder not found"):
        dry_run(recipe)


def test_cache_teacher_builds_the_cache_a_run_with_a_transfer_set_reads(tmp_path, monkeypatch):
    """``kdengine cache-teacher`` draws the stage's inputs as the run does, transfer rows included:
    the run finds every epoch present and never loads the teacher to build one (before, the
    command built a cache without the transfer rows, under another key, and the run built its own)."""
    recipe = with_transfer(tmp_path, ratio=0.5)
    recipe["teacher"].update(train=False, cache=True, cache_dir=str(tmp_path / "cache"), cache_dtype="float32")
    recipe["train"]["baseline"] = False
    built = kdengine.cache_teacher(copy.deepcopy(recipe), progress=False, output_dir=tmp_path)
    assert len(built) == 1 and built[0].missing(recipe["train"]["epochs"]) == []
    assert built[0].layout.sizes[0] == 4 + 2  # each step: 4 labelled rows and 2 transfer rows

    from kdengine.teacher.cached import CachedTeacher

    def no_teacher(self):
        raise AssertionError("the run loaded the teacher to build a cache cache-teacher had built")

    monkeypatch.setattr(CachedTeacher, "load", no_teacher)
    kdengine.run(recipe, progress=False, output_dir=tmp_path / "runs")
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()] == [built[0].path.name]


# ------------------------------------------------------------------ the hard-label baseline


def test_the_hard_label_baseline_trains_scratch_on_the_transfer_rows_as_the_teacher_labels_them(tmp_path,
                                                                                                monkeypatch):
    """``train.baseline_transfer``: a ``scratch-transfer`` stage trains the label terms alone on
    every row, the transfer rows' targets being the teacher's thresholded edge map; scratch never
    sees the transfer rows; the report says which stage saw what."""
    from kdengine_edges.provider import EdgeProvider

    labelled_by_teacher = []
    real_labels = EdgeProvider.teacher_labels

    def labels_spy(self, output, targets):
        labels = real_labels(self, output, targets)
        labelled_by_teacher.append((output.detach().clone(), labels.clone()))
        return labels

    monkeypatch.setattr(EdgeProvider, "teacher_labels", labels_spy)
    steps = steps_per_stage(monkeypatch, lambda names, inputs, targets, labelled: (
        inputs.shape[0], targets.shape[0], labelled, tuple(names)))
    recipe = with_transfer(tmp_path, ratio=0.5)
    recipe["train"]["baseline_transfer"] = True
    recipe["loss"] = [{"name": "weighted_bce", "weight": 0.5, "params": {"pos_weight": 10.0}},
                      {"name": "sigmoid_mse", "weight": 0.5}]
    results = kdengine.run(recipe, progress=False, output_dir=tmp_path / "runs")
    assert [s.stage for s in results.stages] == ["teacher", "scratch", "scratch-transfer", "distilled"]
    label_terms = ("weighted_bce",)
    assert set(steps["scratch"]) == {(4, 4, None, label_terms)}  # never a transfer row
    assert set(steps["scratch-transfer"]) == {(6, 6, None, label_terms)}  # 4 labelled + 2 the teacher labels
    assert set(steps["distilled"]) == {(6, 4, 4, ("weighted_bce", "sigmoid_mse"))}
    assert len(labelled_by_teacher) == len(steps["scratch-transfer"])
    for output, labels in labelled_by_teacher:
        assert output.shape[0] == 2 and torch.equal(labels, (output >= 0).float())
        assert labels.sum() > 0  # a teacher's map, not an empty one
    stage = results.stage("scratch-transfer")
    assert "labelled by the teacher's hard labels" in stage.transfer and results.stage("scratch").transfer is None
    report = (tmp_path / "runs").glob("*/results.md")
    text = next(report).read_text()
    assert "- student (scratch): never sees it" in text
    assert "student (scratch + transfer, teacher's hard labels): 2 rows per step" in text


def test_the_hard_label_baseline_needs_a_transfer_set(tmp_path):
    recipe = copy.deepcopy(TINY_EDGE)
    recipe["train"]["baseline_transfer"] = True
    with pytest.raises(KDEngineError, match=r"train.baseline_transfer: .*needs a \[data.transfer\] set"):
        kdengine.load_recipe(recipe)


def test_a_dataset_that_cannot_turn_a_prediction_into_a_label_says_so():
    from kdengine import DatasetProvider

    with pytest.raises(KDEngineError, match="does not say how a teacher's output becomes its labels"):
        DatasetProvider.teacher_labels(object(), torch.zeros(2, 3), torch.zeros(2))


def test_classification_hard_labels_follow_the_targets_format():
    from kdengine_classification.data import Digits

    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])
    provider = Digits.__new__(Digits)
    assert torch.equal(provider.teacher_labels(logits, torch.tensor([2, 0])), torch.tensor([1, 0]))
    soft = provider.teacher_labels(logits, torch.full((4, 3), 1 / 3))  # Mixup or CutMix targets
    assert torch.equal(soft, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))



def test_classification_transfer_rows_get_the_batch_augmentation_under_a_stream_of_their_own(tmp_path, monkeypatch):
    """Classification augments on the batch (crop, flip, CutMix, Mixup): without the transfer rows
    getting it too, they would reach teacher and student as the same plain image every epoch."""
    from conftest import TINY_RECIPE

    seen = steps_per_stage(monkeypatch, lambda names, inputs, targets, labelled: (
        inputs[:labelled].clone(), inputs[labelled:].clone() if labelled is not None else None))

    def distilled_rows(name, augment, transfer=True):
        """(labelled rows, transfer rows) of each distilled step of a tiny digits run."""
        recipe = copy.deepcopy(TINY_RECIPE)
        recipe["data"]["params"]["augment"] = augment
        recipe["train"].update(epochs=2, baseline=False)
        recipe["teacher"]["train"] = False
        if transfer:  # other digits
            recipe["data"]["transfer"] = {"name": "digits", "ratio": 0.5,
                                          "params": {"image_size": 8, "train_size": 200, "split_seed": 1}}
        seen.clear()
        kdengine.run(recipe, progress=False, output_dir=tmp_path / name)
        return seen["distilled"]

    strong = {"crop_padding": 2, "flip": True, "mixup_alpha": 1.0}
    plain = distilled_rows("plain", {})
    mixed = distilled_rows("mixed", strong)
    again = distilled_rows("again", strong)
    alone = distilled_rows("alone", strong, transfer=False)
    assert len(plain) == len(mixed) == len(alone) == 4 and mixed[0][1].shape == (16, 1, 8, 8)
    for (_, raw), (labelled, extra), (labelled_again, extra_again), (labelled_alone, _) in zip(plain, mixed, again, alone):
        assert not torch.allclose(raw, extra)  # augmented ...
        assert torch.equal(extra, extra_again) and torch.equal(labelled, labelled_again)  # ... reproducibly
        assert torch.equal(labelled, labelled_alone)  # the labelled rows' own draws are untouched
    # Mixup blends the transfer rows among themselves: no row is one plain image
    assert not any(torch.equal(extra[i], raw[j]) for _, extra in mixed for _, raw in plain
                   for i in range(16) for j in range(16))


def test_auto_weights_are_measured_on_the_rows_the_stage_trains_on_transfer_rows_included(tmp_path, monkeypatch):
    import kdengine.train.balance as balance

    measured = []
    real = balance.measure_gradient_norms

    def spy(objective, batches, **kwargs):
        batches = list(batches)
        measured.extend((inputs.shape[0], labelled) for inputs, _, _, labelled in batches)
        return real(objective, batches, **kwargs)

    monkeypatch.setattr(balance, "measure_gradient_norms", spy)
    seen = rows_per_stage(monkeypatch)
    recipe = with_transfer(tmp_path, ratio=0.5)
    recipe["teacher"]["train"] = False
    recipe["train"].update(baseline=False, balance_steps=2)
    recipe["loss"][1].update(weight="auto", share=0.5)
    results = kdengine.run(recipe, progress=False, output_dir=tmp_path / "runs")
    assert measured == [(6, 4), (6, 4)] == seen["distilled"][:2]  # 4 labelled + 2 transfer rows, as trained
    assert results.stage("distilled").loss_weights["sigmoid_mse"] > 0


def test_the_processes_shares_put_together_keep_the_labelled_rows_first():
    from kdengine.train.balance import labelled_first, whole_batch_teacher

    order, labelled = labelled_first([(3, 2), (3, 2)])  # each process: 2 labelled rows, then 1 transfer row
    assert order.tolist() == [0, 1, 3, 4, 2, 5] and labelled == 4
    assert labelled_first([(2, None), (2, None)])[0].tolist() == [0, 1, 2, 3]
    assert labelled_first([(2, None), (2, None)])[1] is None
    taught = [(torch.tensor([[0.0], [1.0], [2.0]]), {"f": torch.tensor([0, 1, 2])}),
              (torch.tensor([[3.0], [4.0], [5.0]]), {"f": torch.tensor([3, 4, 5])})]
    outputs, features = whole_batch_teacher(taught, order)(None, slice(0, 6))
    assert outputs.flatten().tolist() == [0, 1, 3, 4, 2, 5] and features["f"].tolist() == [0, 1, 3, 4, 2, 5]
