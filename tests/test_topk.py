"""Top-k logit storage in the teacher cache (kdengine.teacher.topk, ``teacher.cache_topk``)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import kdengine
from kdengine import KDEngineError
from kdengine.teacher import topk
from kdengine.teacher.cache import stored_arrays
from kdengine.tools.validate import dry_run

pytestmark = pytest.mark.usefixtures("one_thread")


def rebuilt(logits: torch.Tensor, k: int) -> torch.Tensor:
    stored = topk.encode(logits, k)
    return topk.decode(stored[topk.VALUES], stored[topk.CLASSES], stored[topk.LSE], logits.shape[1])


def test_the_top_k_logits_and_their_probabilities_are_the_teachers():
    torch.manual_seed(0)
    logits = torch.randn(6, 100) * 3
    out = rebuilt(logits, 10)
    top = logits.topk(10, dim=1).indices
    assert torch.equal(out.gather(1, top), logits.gather(1, top))  # the stored logits, exactly
    p, q = logits.softmax(dim=1), out.softmax(dim=1)  # at T = 1
    torch.testing.assert_close(q.gather(1, top), p.gather(1, top), rtol=1e-5, atol=1e-7)
    assert torch.equal(out.topk(10, dim=1).indices.sort(dim=1).values, top.sort(dim=1).values)


def test_the_other_classes_share_the_rest_of_the_mass_evenly():
    logits = torch.tensor([[5.0, 3.0, 1.0, 0.0, -1.0, -4.0]])
    out = rebuilt(logits, 2)
    p, q = logits.softmax(dim=1)[0], out.softmax(dim=1)[0]
    rest = q[2:]
    torch.testing.assert_close(rest, torch.full_like(rest, float(p[2:].sum()) / 4))
    assert rest.max() <= q[:2].min()  # the tail never overtakes a kept class


def test_k_at_or_above_the_number_of_classes_keeps_every_logit():
    logits = torch.randn(3, 5)
    assert torch.equal(rebuilt(logits, 5), logits) and torch.equal(rebuilt(logits, 50), logits)


def test_dense_outputs_and_tapped_features_are_refused_with_the_field_named():
    with pytest.raises(KDEngineError, match=r"^teacher\.cache_topk: .*\(4, 1, 8, 8\).*classification"):
        stored_arrays({"output": torch.zeros(4, 1, 8, 8)}, 3)
    with pytest.raises(KDEngineError, match=r"^teacher\.cache_topk: .*feat-0"):
        stored_arrays({"output": torch.zeros(4, 10), "feat-0": torch.zeros(4, 8)}, 3)
    assert set(stored_arrays({"output": torch.zeros(4, 10)}, None)) == {"output"}


def test_cache_topk_needs_the_cache(tiny_recipe):
    tiny_recipe["teacher"]["cache_topk"] = 5
    with pytest.raises(KDEngineError, match=r"^<dict>: teacher\.cache_topk: only the teacher-output cache"):
        kdengine.load_recipe(tiny_recipe)


def test_validate_refuses_top_k_with_feature_taps_naming_the_file(tiny_recipe):
    tiny_recipe["teacher"].update(cache=True, cache_topk=3)
    tiny_recipe["loss"].append({"name": "fitnets", "weight": 0.1,
                                "params": {"student_layer": "features.0", "teacher_layer": "features.0"}})
    with pytest.raises(KDEngineError, match=r"^<dict>: teacher\.cache_topk: the loss terms tap teacher features"):
        dry_run(tiny_recipe)


def test_a_top_k_cache_trains_and_is_never_served_to_a_full_logit_run(tiny_recipe, tmp_path):
    root = tmp_path / "cache"
    tiny_recipe["teacher"].update(cache=True, cache_dir=str(root))
    tiny_recipe["train"]["baseline"] = False
    full = kdengine.run(copy.deepcopy(tiny_recipe), progress=False, output_dir=tmp_path / "full")
    tiny_recipe["teacher"]["cache_topk"] = 3
    report = dry_run(copy.deepcopy(tiny_recipe))
    assert "top-3 logits" in report.caches[0].line()
    results = kdengine.run(tiny_recipe, progress=False, output_dir=tmp_path / "topk")
    distilled = results.stage("distilled").history[-1].losses
    assert all(v == v for v in distilled.values()) and distilled["kl_div"] > 0
    assert distilled != full.stage("distilled").history[-1].losses
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    assert len(folders) == 2  # same teacher, data and seed: only top-k storage tells them apart
    metas = {f: json.loads((f / "meta.json").read_text()) for f in folders}
    (topk_folder,) = [f for f, meta in metas.items() if meta["parts"].get("output_topk") == 3]
    assert sorted(p.name for p in (topk_folder / "epoch-0001").glob("*.npy")) == \
        sorted(f"{name}.npy" for name in (topk.CLASSES, topk.LSE, topk.VALUES))
    assert report.caches[0].bytes == sum(p.stat().st_size for p in topk_folder.rglob("*.npy"))
    (full_folder,) = [f for f in folders if f != topk_folder]
    # 3 float16 logits, 3 one-byte classes and a log-sum-exp a row, against 10 float16 logits
    assert sum(p.stat().st_size for p in topk_folder.rglob("*.npy")) < \
        sum(p.stat().st_size for p in full_folder.rglob("*.npy"))


@pytest.mark.parametrize("classes, dtype", [(10, torch.uint8), (1000, torch.int16), (40000, torch.int32)])
@pytest.mark.parametrize("cache_dtype", ["float16", "bfloat16"])
def test_a_cache_keeps_classes_in_the_smallest_integer_type_and_reads_them_back(tmp_path, classes, dtype,
                                                                               cache_dtype):
    from kdengine.teacher.cache import Layout, TeacherCache
    from kdengine.teacher.keys import CacheKey

    assert topk.class_dtype(classes) is dtype
    logits = torch.randn(6, classes, generator=torch.Generator().manual_seed(0)) * 4
    cache = TeacherCache.open(tmp_path, CacheKey({"output_topk": 3}), Layout((4, 2), 1), cache_dtype)
    steps = [logits[:4], logits[4:]]
    cache.ensure(1, lambda epoch: iter(steps), lambda: (lambda x: (x, {})), [])
    assert torch.from_numpy(cache._arrays(1)[topk.CLASSES][:]).dtype is dtype
    got, _ = cache.lookup(1, 1, None, [], torch.device("cpu"))
    top = logits[4:].topk(3, dim=1).indices
    assert torch.equal(got.topk(3, dim=1).indices.sort(dim=1).values, top.sort(dim=1).values)
    torch.testing.assert_close(got.gather(1, top), logits[4:].gather(1, top), rtol=2 ** -7, atol=0.1)
