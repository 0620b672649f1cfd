"""Intermediate features by module path, through forward hooks, and adapters between them.

A loss term names the layers it needs (``named_modules`` paths such as ``"layers.2"``); the
engine opens a :class:`FeatureTaps` on the student and one on the teacher, and after each forward
pass the captured outputs are in ``taps.features``. Models are never edited.
"""

from __future__ import annotations

import difflib
import math

import torch
from torch import nn

from kdengine.errors import KDEngineError


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, dict):
        for value in output.values():
            if isinstance(value, torch.Tensor):
                return value
    raise KDEngineError(f"cannot tap a module whose output is {type(output).__name__}")


def resolve_module(model: nn.Module, path: str, role: str = "model") -> nn.Module:
    modules = dict(model.named_modules())
    if path not in modules:
        close = difflib.get_close_matches(path, list(modules), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KDEngineError(
            f"{role} has no module '{path}'.{hint} Run 'kdengine layers' to list the tappable layers."
        )
    return modules[path]


class FeatureTaps:
    """Captures the outputs of the named modules on every forward pass while open.

    ``features`` is emptied as each forward pass of the model begins, so a module that did not
    run this time (a conditional branch) has no feature rather than the previous batch's.
    """

    def __init__(self, model: nn.Module, paths: list[str], role: str = "model"):
        self.features: dict[str, torch.Tensor] = {}
        self.paths = list(dict.fromkeys(paths))
        self.role = role
        self._handles = [model.register_forward_pre_hook(lambda _module, _inputs: self.features.clear())]
        for path in self.paths:
            module = resolve_module(model, path, role)
            self._handles.append(module.register_forward_hook(self._hook(path)))

    def collect(self) -> dict[str, torch.Tensor]:
        """Every tapped feature of the forward pass just made; a module that did not run is an error."""
        missing = [path for path in self.paths if path not in self.features]
        if missing:
            names = ", ".join(f"'{path}'" for path in missing)
            raise KDEngineError(
                f"{self.role} module {names} did not run in this forward pass (a branch the model "
                "skips on some inputs?), so the loss terms that tap it have no feature for this batch; "
                "tap a module that runs on every batch"
            )
        return dict(self.features)

    def _hook(self, path: str):
        def hook(_module, _inputs, output):
            self.features[path] = _first_tensor(output)

        return hook

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.features.clear()

    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def list_layers(model: nn.Module, sample: torch.Tensor) -> list[tuple[str, str, tuple[int, ...]]]:
    """(path, module type, output shape) of every module that returns a tensor, in call order."""
    seen: list[tuple[str, str, tuple[int, ...]]] = []
    handles = []
    for path, module in model.named_modules():
        if not path:
            continue

        def hook(mod, _inputs, output, _path=path):
            try:
                tensor = _first_tensor(output)
            except KDEngineError:
                return
            seen.append((_path, type(mod).__name__, tuple(tensor.shape)))

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            model(sample)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def as_feature_map(feature: torch.Tensor, spatial: tuple[int, int] | None = None) -> torch.Tensor:
    """Bring a feature to (B, C, H, W).

    Transformer layers (SwinIR, ViT) emit tokens (B, H*W, C); they are reshaped to a map, using
    ``spatial`` = (H, W) when given, otherwise a square grid.
    """
    if feature.dim() == 4:
        return feature
    if feature.dim() == 3:
        batch, tokens, channels = feature.shape
        if spatial is None:
            side = math.isqrt(tokens)
            if side * side != tokens:
                raise KDEngineError(
                    f"cannot reshape {tokens} tokens to a square map; give the spatial size"
                )
            spatial = (side, side)
        if spatial[0] * spatial[1] != tokens:
            raise KDEngineError(f"{tokens} tokens do not fill a {spatial[0]}x{spatial[1]} map")
        return feature.transpose(1, 2).reshape(batch, channels, *spatial)
    if feature.dim() == 2:
        return feature[:, :, None, None]
    raise KDEngineError(f"cannot use a feature of shape {tuple(feature.shape)} as a map")


def make_adapter(student_channels: int, teacher_channels: int) -> nn.Module:
    """A learned 1x1 convolution from student to teacher channels (identity when they agree)."""
    if student_channels == teacher_channels:
        return nn.Identity()
    return nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
