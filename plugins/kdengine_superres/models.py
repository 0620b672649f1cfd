"""Super-resolution models: a SwinIR teacher through spandrel and a compact channel-attention student.

- ``swinir``: SwinIR (Liang et al., "SwinIR: Image Restoration Using Swin Transformer", ICCVW 2021),
  built with spandrel's implementation of the architecture so that the official release files and
  kdengine's own checkpoints load through the same code. Its residual Swin transformer groups
  ``layers.<i>`` emit tokens (B, H*W, C) at the (window-padded) LR resolution.
- ``attention_srnet``: residual blocks with channel attention (RCAB, Zhang et al., "Image
  Super-Resolution Using Very Deep Residual Channel Attention Networks", ECCV 2018) at reduced width,
  with pixel-shuffle upsampling (Shi et al., CVPR 2016). Feature maps are tappable at ``head``,
  ``body.<i>`` (the output of block i), ``body_tail`` and ``upsample``.
- ``spandrel``: any architecture spandrel detects, from a checkpoint file only.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from kdengine import CheckpointError, DataInfo, KDEngineError, ModelFactory, Params
from kdengine import read_state_dict

# --------------------------------------------------------------------------------------- SwinIR

#: Presets. ``classical`` and ``lightweight`` are the configurations of the official x4 release files
#: (001_classicalSR_DF2K_s64w8_SwinIR-M_x4.pth, 002_lightweightSR_DIV2K_s64w8_SwinIR-S_x4.pth);
#: ``small`` (0.24M parameters) is the offline recipes' teacher, trained on a laptop CPU in minutes;
#: ``tiny`` is for tests.
SWINIR_SIZES: dict[str, dict] = {
    "classical": dict(
        embed_dim=180, depths=[6] * 6, num_heads=[6] * 6, mlp_ratio=2.0, upsampler="pixelshuffle"
    ),
    "lightweight": dict(
        embed_dim=60, depths=[6] * 4, num_heads=[6] * 4, mlp_ratio=2.0, upsampler="pixelshuffledirect"
    ),
    "small": dict(
        embed_dim=48, depths=[4, 4], num_heads=[4, 4], mlp_ratio=2.0, upsampler="pixelshuffledirect"
    ),
    "tiny": dict(
        embed_dim=24, depths=[2, 2], num_heads=[2, 2], mlp_ratio=2.0, upsampler="pixelshuffledirect"
    ),
}


def _scale_of(info: DataInfo) -> int:
    if not info.scale:
        raise KDEngineError(f"a super-resolution model needs a dataset with a scale; got task '{info.task}'")
    return int(info.scale)


def read_spandrel_state(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely (safetensors, or ``torch.load(weights_only=True)``) for spandrel."""
    from spandrel import canonicalize_state_dict

    return canonicalize_state_dict(read_state_dict(Path(path)))


def load_with_spandrel(path: Path, expect_arch: str | None = None, scale: int | None = None) -> nn.Module:
    """Build and load the model a checkpoint describes; spandrel detects the architecture.

    Raises :class:`CheckpointError` naming the file when spandrel cannot identify it, when it holds a
    different architecture than ``expect_arch``, or a different scale than ``scale``.
    """
    from spandrel import ModelLoader, UnsupportedModelError

    path = Path(path)
    state = read_spandrel_state(path)
    try:
        descriptor = ModelLoader(device="cpu").load_from_state_dict(state)
    except UnsupportedModelError:
        raise CheckpointError(
            f"{path}: spandrel cannot identify the architecture of this checkpoint "
            f"(first keys: {', '.join(list(state)[:3]) or 'none'}); "
            "give a published SwinIR (or other spandrel-supported) release file or a kdengine checkpoint"
        ) from None
    except Exception as exc:  # a recognised architecture whose tensors do not fit
        raise CheckpointError(f"{path}: spandrel could not load it ({type(exc).__name__}: {exc})") from exc
    arch = descriptor.architecture.id
    if expect_arch is not None and arch != expect_arch:
        raise CheckpointError(
            f"{path}: holds a {arch} model, not {expect_arch}; "
            f"name the model 'spandrel' with params {{ arch = \"{arch}\" }} to use it"
        )
    if scale is not None and descriptor.scale != scale:
        raise CheckpointError(f"{path}: is a x{descriptor.scale} model but the dataset is x{scale}")
    model = descriptor.model
    model.eval()
    return model


class SwinIR(ModelFactory):
    """SwinIR (Liang et al. 2021) through spandrel: classical, lightweight, small or tiny."""

    class Params(Params):
        size: Literal["classical", "lightweight", "small", "tiny"] = "tiny"
        #: Overrides of the preset, for experiments.
        embed_dim: int | None = Field(default=None, ge=6)
        depths: list[int] | None = Field(default=None, min_length=1)
        num_heads: list[int] | None = Field(default=None, min_length=1)
        window_size: int = Field(default=8, ge=2)
        #: Stochastic depth, used while training (SwinIR trains with 0.1).
        drop_path_rate: float = Field(default=0.1, ge=0.0, lt=1.0)
        #: Add a bicubic upsampling of the input to the output, so the network learns only the
        #: residual detail (as attention_srnet does). Not part of the published SwinIR: a model
        #: trained from scratch in minutes converges several times faster with it. Checkpoints
        #: record it, and loading one with the other setting is refused.
        image_skip: bool = False

        @model_validator(mode="after")
        def _consistent(self):
            preset = SWINIR_SIZES[self.size]
            depths = self.depths or preset["depths"]
            heads = self.num_heads or preset["num_heads"]
            dim = self.embed_dim or preset["embed_dim"]
            if len(depths) != len(heads):
                raise ValueError(f"depths ({len(depths)} groups) and num_heads ({len(heads)}) must have the same length")
            if any(dim % h for h in heads):
                raise ValueError(f"embed_dim {dim} must be divisible by every num_heads {heads}")
            return self

    def config(self) -> dict:
        p = self.params
        cfg = dict(SWINIR_SIZES[p.size])
        for key in ("embed_dim", "depths", "num_heads"):
            if getattr(p, key) is not None:
                cfg[key] = getattr(p, key)
        return cfg

    def build(self, info: DataInfo) -> nn.Module:
        from spandrel.architectures.SwinIR import SwinIR as SwinIRNet

        cfg = self.config()
        net = swinir_with_image_skip() if self.params.image_skip else SwinIRNet
        return net(
            img_size=64,
            in_chans=info.in_channels,
            window_size=self.params.window_size,
            upscale=_scale_of(info),
            # spandrel infers img_range from the window size when it reloads: 1.0 unless window 7
            img_range=255.0 if self.params.window_size == 7 else 1.0,
            resi_connection="1conv",
            drop_path_rate=self.params.drop_path_rate,
            **cfg,
        )

    def load(self, path: Path, info: DataInfo) -> nn.Module:
        """Load an official SwinIR release file or a kdengine checkpoint; spandrel reads the shape.

        A checkpoint of a SwinIR with ``image_skip`` is loaded into the model these params build
        (spandrel knows no such variant); the flag must agree with the one the file was saved with.
        """
        path = Path(path)
        state = read_spandrel_state(path)
        saved_skip = IMAGE_SKIP_KEY in state
        if saved_skip != self.params.image_skip:
            raise CheckpointError(
                f"{path}: this SwinIR was trained with image_skip = {str(saved_skip).lower()}; "
                f"set image_skip = {str(saved_skip).lower()} in the model's params to load it"
            )
        if not saved_skip:
            return load_with_spandrel(path, expect_arch="SwinIR", scale=_scale_of(info))
        model = self.build(info)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: does not fit swinir with params {self.params.model_dump()} "
                                  f"({str(exc).splitlines()[0]})") from None
        model.eval()
        return model


#: The state-dict entry that marks a SwinIR trained with a bicubic image skip.
IMAGE_SKIP_KEY = "image_skip"


@functools.cache
def swinir_with_image_skip() -> type[nn.Module]:
    """The SwinIR subclass (made on first use: spandrel is imported lazily)."""
    from spandrel.architectures.SwinIR import SwinIR as SwinIRNet

    class SwinIRWithImageSkip(SwinIRNet):
        """SwinIR whose output adds a bicubic upsampling of the input (residual learning)."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            # Saved with the weights, so that the file says how it must be run.
            self.register_buffer(IMAGE_SKIP_KEY, torch.ones(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # SwinIR adds back the dataset mean it subtracted; here the bicubic image takes its place,
            # so the network's output is the residual alone.
            skip = nn.functional.interpolate(x, scale_factor=self.upscale, mode="bicubic", align_corners=False)
            return super().forward(x) - self.mean.type_as(x) + skip

    return SwinIRWithImageSkip


class SpandrelModel(ModelFactory):
    """Any architecture spandrel detects (RCAN, HAT, ESRGAN, ...), from a checkpoint file."""

    class Params(Params):
        #: The spandrel architecture id the file must hold (e.g. "RCAN"); empty accepts any.
        arch: str = ""

    def build(self, info: DataInfo) -> nn.Module:
        raise CheckpointError(
            "model 'spandrel' only loads checkpoints: give the recipe a checkpoint = \"...\" file"
        )

    def load(self, path: Path, info: DataInfo) -> nn.Module:
        return load_with_spandrel(path, expect_arch=self.params.arch or None, scale=_scale_of(info))


# ------------------------------------------------------------------------------ attention student


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation over channels: x * sigmoid(W2 relu(W1 avgpool(x))) (RCAN eq. 9-10)."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.squeeze = nn.Conv2d(channels, hidden, 1)
        self.excite = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.excite(torch.relu(self.squeeze(self.pool(x)))))
        return x * weights


class AttentionBlock(nn.Module):
    """Residual channel-attention block (RCAB): x + CA(conv(relu(conv(x))))."""

    def __init__(self, channels: int, reduction: int, res_scale: float):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.attention = ChannelAttention(channels, reduction)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.attention(self.conv2(torch.relu(self.conv1(x))))


def pixel_shuffle_upsampler(channels: int, scale: int) -> nn.Sequential:
    """Sub-pixel convolution: x2 stages for powers of two, one stage otherwise."""
    stages: list[nn.Module] = []
    if scale & (scale - 1) == 0:
        for _ in range(int(math.log2(scale))):
            stages += [nn.Conv2d(channels, 4 * channels, 3, padding=1), nn.PixelShuffle(2)]
    else:
        stages += [nn.Conv2d(channels, scale * scale * channels, 3, padding=1), nn.PixelShuffle(scale)]
    return nn.Sequential(*stages)


class AttentionSRNetModule(nn.Module):
    """head -> N attention blocks -> body_tail (+ long skip) -> pixel-shuffle upsample -> tail.

    The output adds a bicubic upsampling of the input (``image_skip``), so the network learns the
    residual high frequencies; it starts as a bicubic interpolator.
    """

    def __init__(self, scale: int, channels: int, blocks: int, reduction: int, res_scale: float,
                 in_channels: int = 3, image_skip: bool = True):
        super().__init__()
        self.scale = scale
        self.image_skip = image_skip
        self.head = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.body = nn.Sequential(*[AttentionBlock(channels, reduction, res_scale) for _ in range(blocks)])
        self.body_tail = nn.Conv2d(channels, channels, 3, padding=1)
        self.upsample = pixel_shuffle_upsampler(channels, scale)
        self.tail = nn.Conv2d(channels, in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shallow = self.head(x)
        deep = self.body_tail(self.body(shallow)) + shallow
        out = self.tail(self.upsample(deep))
        if self.image_skip:
            out = out + nn.functional.interpolate(x, scale_factor=self.scale, mode="bicubic",
                                                  align_corners=False)
        return out


class AttentionSRNet(ModelFactory):
    """Compact RCAN-style student: residual channel-attention blocks, pixel-shuffle upsampling."""

    class Params(Params):
        blocks: int = Field(default=12, ge=1, le=64)
        channels: int = Field(default=32, ge=4, le=512)
        reduction: int = Field(default=8, ge=1)
        res_scale: float = Field(default=1.0, gt=0.0)
        image_skip: bool = True

    def build(self, info: DataInfo) -> nn.Module:
        p = self.params
        return AttentionSRNetModule(
            scale=_scale_of(info), channels=p.channels, blocks=p.blocks, reduction=p.reduction,
            res_scale=p.res_scale, in_channels=info.in_channels, image_skip=p.image_skip,
        )
