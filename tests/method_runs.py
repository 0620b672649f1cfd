"""One short distillation run with a given loss term beside cross-entropy: the end-to-end check
every method of the zoo gets."""

from __future__ import annotations


def distil_once(tiny_recipe: dict, tmp_path, name: str, params: dict, teacher_width: float | None = None):
    """The distilled stage of a tiny run (64 train, 48 val and test digits) that trains with
    ``0.5 * name + 0.5 * cross-entropy``; ``teacher_width`` widens the teacher so adapters are real."""
    import kdengine

    tiny_recipe["run"]["name"] = f"kd-{name}"
    tiny_recipe["data"]["params"].update(train_size=64, val_size=48, test_size=48)
    tiny_recipe["train"]["baseline"] = False
    if teacher_width is not None:
        tiny_recipe["teacher"]["params"]["width_mult"] = teacher_width
    tiny_recipe["loss"] = [{"name": name, "weight": 0.5, "params": params},
                           {"name": "cross_entropy", "weight": 0.5}]
    return kdengine.run(tiny_recipe, output_dir=tmp_path, progress=False).stage("distilled")
