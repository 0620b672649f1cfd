"""Loss terms of super-resolution distillation: pixel L1, output KD, feature matching, VGG perceptual."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from kdengine import CheckpointError, KDEngineError, LossContext, LossTerm, Params
from kdengine import as_feature_map, make_adapter


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """Teacher tensors come from ``torch.inference_mode``; autograd may not save those."""
    return tensor.clone() if tensor.is_inference() else tensor


def _stack(x) -> torch.Tensor:
    return torch.stack(list(x)) if isinstance(x, (list, tuple)) else x


class L1(LossTerm):
    """Pixel L1 to the ground truth: mean |SR - HR| (Lim et al., EDSR, CVPRW 2017)."""

    def forward(self, ctx: LossContext) -> torch.Tensor:
        return F.l1_loss(ctx.student, _stack(ctx.targets))


class TeacherL1(LossTerm):
    """Output-level distillation: mean |SR_student - SR_teacher| over pixels, the frozen teacher's
    super-resolved image serving as a second, smoother target (Gao et al., "Image Super-Resolution
    Using Knowledge Distillation", ACCV 2018; the output term of FAKD, He et al., ICIP 2020).
    """

    needs_teacher = True

    def forward(self, ctx: LossContext) -> torch.Tensor:
        if ctx.teacher is None:
            raise KDEngineError("teacher_l1 needs the teacher's output")
        teacher = _plain(ctx.teacher).detach()
        return F.l1_loss(ctx.student, teacher.to(ctx.student.dtype))


def token_map(feature: torch.Tensor, lr_size: tuple[int, int]) -> torch.Tensor:
    """A feature as (B, C, H, W); tokens (B, N, C) are laid out on the LR grid.

    SwinIR pads its input to a multiple of the window size, so its tokens cover the padded grid:
    the grid is found as the smallest multiple m of the LR size whose area is N, and cropped back to
    the LR size so it aligns with a CNN's maps.
    """
    if feature.dim() != 3:
        return as_feature_map(feature)
    height, width = lr_size
    tokens = feature.shape[1]
    for multiple in range(1, 65):
        padded_h = math.ceil(height / multiple) * multiple
        padded_w = math.ceil(width / multiple) * multiple
        if padded_h * padded_w == tokens:
            return as_feature_map(feature, (padded_h, padded_w))[..., :height, :width]
    return as_feature_map(feature)


class FeatureMatch(LossTerm):
    """Feature distillation (FitNets, Romero et al. ICLR 2015; for SR e.g. FAKD, He et al. 2020).

    L = 1/K sum_k || A_k(F_s^k) - F_t^k ||_2^2 (mean over elements), where F_s^k and F_t^k are the
    student's and the frozen teacher's features at the k-th pair of module paths, tokens (B, H*W, C)
    are reshaped to maps on the LR grid, A_k is a learned 1x1 convolution when the channel counts
    differ (identity otherwise), and the student's map is resized bilinearly to the teacher's size if
    they differ. With ``normalize``, both maps are divided by their per-sample RMS first, which makes
    the weight independent of the teacher's feature scale.
    """

    needs_teacher = True

    class Params(Params):
        student_layers: list[str] = Field(min_length=1)
        teacher_layers: list[str] = Field(min_length=1)
        normalize: bool = False

        @model_validator(mode="after")
        def _pairs(self):
            if len(self.student_layers) != len(self.teacher_layers):
                raise ValueError(
                    f"student_layers ({len(self.student_layers)}) and teacher_layers "
                    f"({len(self.teacher_layers)}) must pair up one to one"
                )
            return self

    def __init__(self, params=None):
        super().__init__(params)
        self.adapters = nn.ModuleList()

    def student_taps(self) -> list[str]:
        return list(self.params.student_layers)

    def teacher_taps(self) -> list[str]:
        return list(self.params.teacher_layers)

    def _maps(self, ctx: LossContext):
        inputs = ctx.inputs
        lr_size = tuple(inputs.shape[-2:])
        for s_path, t_path in zip(self.params.student_layers, self.params.teacher_layers):
            if s_path not in ctx.student_features or t_path not in ctx.teacher_features:
                raise KDEngineError(f"feature_match: no feature tapped at student '{s_path}' or "
                                    f"teacher '{t_path}'")
            yield (token_map(ctx.student_features[s_path], lr_size),
                   token_map(_plain(ctx.teacher_features[t_path]), lr_size).detach())

    def setup(self, ctx: LossContext) -> None:
        adapters = []
        for student, teacher in self._maps(ctx):
            adapters.append(make_adapter(student.shape[1], teacher.shape[1]).to(student.device))
        self.adapters = nn.ModuleList(adapters)

    def forward(self, ctx: LossContext) -> torch.Tensor:
        if len(self.adapters) != len(self.params.student_layers):
            self.setup(ctx)
        total = 0.0
        for adapter, (student, teacher) in zip(self.adapters, self._maps(ctx)):
            student = adapter(student)
            if student.shape[-2:] != teacher.shape[-2:]:
                student = F.interpolate(student, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
            if self.params.normalize:
                student = student / student.pow(2).mean(dim=(1, 2, 3), keepdim=True).add(1e-8).sqrt()
                teacher = teacher / teacher.pow(2).mean(dim=(1, 2, 3), keepdim=True).add(1e-8).sqrt()
            total = total + F.mse_loss(student, teacher.to(student.dtype))
        return total / len(self.adapters)


# ------------------------------------------------------------------------------------- perceptual

VGG19_FILE = "vgg19-dcbb9e9d.pth"


def vgg19_layer_names() -> list[str]:
    """Names of torchvision's ``vgg19().features`` modules in order: conv1_1, relu1_1, ..., pool5."""
    names, block = [], 1
    for depth in (2, 2, 4, 4, 4):
        for i in range(1, depth + 1):
            names += [f"conv{block}_{i}", f"relu{block}_{i}"]
        names.append(f"pool{block}")
        block += 1
    return names


def vgg19_features() -> nn.Sequential:
    """torchvision's ``vgg19().features`` layout (configuration "E"), randomly initialised."""
    from torchvision.models.vgg import cfgs, make_layers

    return make_layers(cfgs["E"], batch_norm=False)


def default_vgg_weights() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE


def _missing_weights_message(path: Path) -> str:
    return (
        f"the VGG19 ImageNet weights the perceptual loss needs are not at {path}. "
        f"Download torchvision's {VGG19_FILE} (https://download.pytorch.org/models/{VGG19_FILE}) "
        f"on a machine with internet and put it in {default_vgg_weights().parent}/ (torch's hub "
        "cache), or set this loss term's params.weights to its path; or drop the perceptual loss"
    )


class Perceptual(LossTerm):
    """VGG perceptual loss (Johnson et al., ECCV 2016; Ledig et al., SRGAN, CVPR 2017).

    L = 1/K sum_k d(phi_k(SR), phi_k(HR)), with phi_k the ImageNet-trained VGG19 features at layer k
    (default relu5_4, SRGAN's VGG54) of ImageNet-normalised images and d the mean absolute ("l1")
    or mean squared ("mse") difference. The VGG is frozen and never trained. Its weights come from
    ``weights`` or torch's hub cache (``torch.hub.get_dir()/checkpoints/vgg19-dcbb9e9d.pth``);
    without them the term refuses to exist rather than use a random network.
    """

    class Params(Params):
        weights: Path | None = None
        layers: list[str] = Field(default_factory=lambda: ["relu5_4"], min_length=1)
        criterion: Literal["l1", "mse"] = "l1"

        @model_validator(mode="after")
        def _check(self):
            names = vgg19_layer_names()
            unknown = [layer for layer in self.layers if layer not in names]
            if unknown:
                raise ValueError(f"unknown VGG19 layer(s) {unknown}; use names like relu2_2, relu5_4")
            path = self.weights or default_vgg_weights()
            if not Path(path).is_file():
                raise ValueError(_missing_weights_message(Path(path)))
            return self

    def __init__(self, params=None):
        super().__init__(params)
        from kdengine import read_state_dict

        path = Path(self.params.weights or default_vgg_weights())
        if not path.is_file():
            raise CheckpointError(_missing_weights_message(path))
        state = read_state_dict(path)
        features = vgg19_features()  # the convolutional part only: the classifier is never used
        features_state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        try:
            features.load_state_dict(features_state)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: not a torchvision VGG19 state dict ({exc})") from None
        names = vgg19_layer_names()
        self._indices = sorted(names.index(layer) for layer in self.params.layers)
        features = features[: self._indices[-1] + 1].eval()
        for param in features.parameters():
            param.requires_grad_(False)
        for module in features:
            if isinstance(module, nn.ReLU):
                module.inplace = False  # a tapped conv output must not be overwritten by its ReLU
        # Held outside the module tree: the frozen VGG is neither trained nor saved with the term.
        self._vgg = [features]
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def _features(self, image: torch.Tensor) -> list[torch.Tensor]:
        vgg = self._vgg[0]
        if next(vgg.parameters()).device != image.device:
            vgg.to(image.device)
        x = (image - self.mean.to(image)) / self.std.to(image)
        found = []
        for index, module in enumerate(vgg):
            x = module(x)
            if index in self._indices:
                found.append(x)
        return found

    def forward(self, ctx: LossContext) -> torch.Tensor:
        distance = F.l1_loss if self.params.criterion == "l1" else F.mse_loss
        target = _stack(ctx.targets)
        with torch.no_grad():
            target_features = self._features(target)
        output_features = self._features(ctx.student)
        terms = [distance(o, t) for o, t in zip(output_features, target_features)]
        return sum(terms) / len(terms)
