"""``kdengine layers RECIPE``: a recipe model's tappable layers with their output shapes."""

from __future__ import annotations

from kdengine.cli._args import add_recipe, shape


def add_parser(sub) -> None:
    layers = sub.add_parser("layers", help="list a recipe model's tappable layers with their output shapes")
    add_recipe(layers)
    layers.add_argument("--role", choices=["student", "teacher"], default="student")
    layers.add_argument("--stage", help="the stage whose model to list, e.g. a progressive chain's generation "
                        "(default: the teacher, or the first student)")
    layers.add_argument("--input-shape", type=shape, help="per-image input shape, e.g. 3,32,32 "
                        "(default: one sample of the recipe's dataset)")


def main(args) -> int:
    from kdengine.tools.layers import format_layers, recipe_layers

    print("\n".join(format_layers(recipe_layers(args.recipe, args.role, args.overrides, args.input_shape, stage=args.stage))))
    return 0
