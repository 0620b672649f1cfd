"""Classification models from timm or torchvision, with a CIFAR stem option."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from kdengine import DataInfo, KDEngineError, ModelFactory, Params


def apply_cifar_stem(model: nn.Module) -> nn.Module:
    """The CIFAR stem for small images: a 3x3 stride-1 first convolution and no max-pool.

    ImageNet stems shrink a 32x32 image 4x before the first block; ResNet/MobileNet CIFAR
    variants keep the resolution instead (He et al. 2016, section 4.2).
    """
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is None:
        raise KDEngineError("cifar_stem: the model has no convolution to adapt")
    parent, attr = _parent_of(model, first_conv)
    if first_conv.kernel_size[0] > 3:
        replacement = nn.Conv2d(first_conv.in_channels, first_conv.out_channels, 3, 1, 1,
                                bias=first_conv.bias is not None)
        setattr(parent, attr, replacement)
    else:
        first_conv.stride = (1, 1)
    for name, module in model.named_modules():
        if isinstance(module, nn.MaxPool2d):
            parent, attr = _parent_of(model, module)
            setattr(parent, attr, nn.Identity())
            break
    return model


def set_input_channels(model: nn.Module, channels: int) -> nn.Module:
    """Replace the first convolution so the model takes ``channels`` input channels."""
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    if first_conv.in_channels == channels:
        return model
    parent, attr = _parent_of(model, first_conv)
    setattr(parent, attr, nn.Conv2d(
        channels, first_conv.out_channels, first_conv.kernel_size, first_conv.stride,
        first_conv.padding, bias=first_conv.bias is not None,
    ))
    return model


def _parent_of(root: nn.Module, target: nn.Module) -> tuple[nn.Module, str]:
    for name, module in root.named_modules():
        for child_name, child in module.named_children():
            if child is target:
                return module, child_name
    raise KDEngineError("module not found in model")


def _require_classes(info: DataInfo) -> int:
    if not info.num_classes:
        raise KDEngineError(f"a classifier needs a dataset with classes; this one is a '{info.task}' dataset")
    return info.num_classes


class TimmModel(ModelFactory):
    """Any timm architecture by name (timm.list_models), optionally with a CIFAR stem."""

    class Params(Params):
        model: str = Field(min_length=1, description="timm model name, e.g. resnet101")
        cifar_stem: bool = False
        pretrained: bool = False
        drop_rate: float = Field(0.0, ge=0, lt=1)

    def build(self, info: DataInfo) -> nn.Module:
        import timm

        p = self.params
        if p.model not in timm.list_models():
            import difflib

            close = difflib.get_close_matches(p.model, timm.list_models(), n=3)
            raise KDEngineError(f"timm has no model '{p.model}'" + (f"; did you mean {', '.join(close)}?" if close else ""))
        try:
            model = timm.create_model(p.model, pretrained=p.pretrained, num_classes=_require_classes(info),
                                      in_chans=info.in_channels, drop_rate=p.drop_rate)
        except Exception as exc:
            if p.pretrained:
                raise KDEngineError(
                    f"could not load pretrained weights for timm '{p.model}' ({type(exc).__name__}: {exc}). "
                    "Offline, put them in the Hugging Face cache (HF_HOME) beforehand or set pretrained = false "
                    "and give a checkpoint instead."
                ) from None
            raise
        return apply_cifar_stem(model) if p.cifar_stem else model


class TorchvisionModel(ModelFactory):
    """Any torchvision classification architecture by name, with width multipliers where the
    architecture has one (MobileNetV2 0.5x, 1.0x) and an optional CIFAR stem."""

    class Params(Params):
        model: str = Field(min_length=1, description="torchvision model name, e.g. mobilenet_v2")
        width_mult: float | None = Field(None, gt=0, le=4)
        cifar_stem: bool = False
        weights: Literal[None, "DEFAULT"] = None

    def build(self, info: DataInfo) -> nn.Module:
        import torchvision

        p = self.params
        available = torchvision.models.list_models(module=torchvision.models)
        if p.model not in available:
            import difflib

            close = difflib.get_close_matches(p.model, available, n=3)
            raise KDEngineError(f"torchvision has no model '{p.model}'" + (f"; did you mean {', '.join(close)}?" if close else ""))
        kwargs = {"num_classes": _require_classes(info)}
        if p.width_mult is not None:
            kwargs["width_mult"] = p.width_mult
        if p.weights is not None:
            raise KDEngineError(
                "torchvision pretrained weights have ImageNet's 1000 classes; train the teacher or give "
                "a checkpoint instead"
            )
        try:
            model = torchvision.models.get_model(p.model, **kwargs)
        except TypeError as exc:
            raise KDEngineError(f"torchvision '{p.model}' does not take these params: {exc}") from None
        set_input_channels(model, info.in_channels)
        return apply_cifar_stem(model) if p.cifar_stem else model
