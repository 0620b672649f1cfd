"""U-Net edge detectors from segmentation-models-pytorch, for the teacher and the student role."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from kdengine import DataInfo, KDEngineError, ModelFactory, Params


class EncoderWeightsError(KDEngineError):
    """Pretrained encoder weights were requested but could not be had."""


def _env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")


@contextlib.contextmanager
def _hub_offline_from_env() -> Iterator[None]:
    """Honour HF_HUB_OFFLINE set after huggingface_hub was imported.

    huggingface_hub reads the variable once, at import; without this, a process that sets it
    later (a test, a notebook) still makes network calls and waits through their retries.
    """
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - smp depends on it
        yield
        return
    before = constants.HF_HUB_OFFLINE
    if _env_offline():
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _unet_class():
    import segmentation_models_pytorch as smp

    class PaddedUnet(smp.Unet):
        """smp U-Net that accepts any input size: pads to the encoder's stride, crops back.

        The state dict is exactly smp.Unet's, so plain smp checkpoints load unchanged.
        """

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D401
            stride = self.encoder.output_stride
            height, width = x.shape[-2:]
            pad_h, pad_w = (-height) % stride, (-width) % stride
            if pad_h or pad_w:
                mode = "reflect" if pad_h < height and pad_w < width else "replicate"
                x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
            out = super().forward(x)
            return out[..., :height, :width]

    return PaddedUnet


class UNet(ModelFactory):
    """U-Net (segmentation-models-pytorch) with any smp encoder; one logit channel per pixel."""

    summary = "smp U-Net with any encoder (resnet34, mobilenet_v2, ...), 1 edge logit per pixel"

    class Params(Params):
        encoder: str = Field("resnet34", description="smp encoder name, e.g. resnet34, mobilenet_v2")
        encoder_weights: Optional[str] = Field(
            None,
            description="None: random init (offline default); 'imagenet': pretrained, fetched "
            "from the Hugging Face Hub or read from its local cache",
        )
        encoder_depth: int = Field(5, ge=3, le=5)
        decoder_channels: Optional[tuple[int, ...]] = Field(
            None, description="one width per decoder block (as many as encoder_depth)"
        )

    def build(self, info: DataInfo) -> torch.nn.Module:
        p = self.params
        kwargs = {}
        if p.decoder_channels is not None:
            if len(p.decoder_channels) != p.encoder_depth or min(p.decoder_channels) < 1:
                raise KDEngineError(
                    f"unet: decoder_channels needs {p.encoder_depth} positive widths "
                    f"(one per encoder stage), got {list(p.decoder_channels)}"
                )
            kwargs["decoder_channels"] = tuple(p.decoder_channels)
        cls = _unet_class()
        common = dict(
            encoder_name=p.encoder,
            encoder_depth=p.encoder_depth,
            in_channels=info.in_channels,
            classes=info.num_classes or 1,
            **kwargs,
        )
        if p.encoder_weights is None:
            return self._construct(cls, common, None)
        with _hub_offline_from_env():
            try:
                return self._construct(cls, common, p.encoder_weights)
            except KDEngineError:
                raise
            except Exception as exc:  # hub / network / cache errors have many types
                raise EncoderWeightsError(
                    f"unet: could not fetch the '{p.encoder_weights}' weights of encoder "
                    f"'{p.encoder}' ({type(exc).__name__}). They come from the Hugging Face Hub: "
                    "run once with network access to fill the local cache (HF_HOME, by default "
                    "~/.cache/huggingface), or copy that cache from a machine that has it, or remove "
                    "encoder_weights from the recipe to train from random initialisation. Set HF_HUB_OFFLINE=1 to fail fast without network."
                ) from exc

    @staticmethod
    def _construct(cls, common: dict, weights: Optional[str]) -> torch.nn.Module:
        try:
            return cls(encoder_weights=weights, **common)
        except KeyError as exc:
            # smp raises KeyError for an unknown encoder or weights name; keep its list of choices.
            raise KDEngineError(f"unet: {exc.args[0] if exc.args else exc}") from exc
