"""U-Net edge detectors from segmentation-models-pytorch, for the teacher and the student role."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from kdengine import DataInfo, KDEngineError, ModelFactory, Params, WeightsUnavailableError, load_weights
from kdengine import (download_errors, downloads_forbidden, hub_cache_dir, hub_offline_from_env,
                      torch_hub_cached_file)


class EncoderWeightsError(WeightsUnavailableError):
    """Pretrained encoder weights were requested but could not be had."""


def _weights_source(encoder: str, weights: str) -> tuple[str, Path | None]:
    """Where smp reads an encoder's pretrained weights from (for the message), and the file that
    ``torch.hub`` would read when it is the downloader.

    smp >= 0.5 downloads them from the Hugging Face Hub (``smp-hub/<encoder>.<weights>``) into its
    cache; older releases used ``torch.hub`` (``$TORCH_HOME/hub/checkpoints``); ``tu-`` encoders
    are timm models and come through timm, from the Hub.
    """
    hub = f"the Hugging Face cache ({hub_cache_dir()})"
    try:
        from segmentation_models_pytorch.encoders import encoders

        settings = encoders[encoder]["pretrained_settings"][weights]
    except (ImportError, KeyError, TypeError):
        return hub, None
    if "repo_id" in settings:
        return f"the Hugging Face cache ({hub_cache_dir()}, Hub repo {settings['repo_id']})", None
    if "url" in settings:
        cached = torch_hub_cached_file(settings["url"])
        return f"the torch.hub cache ({cached}; TORCH_HOME sets the folder)", cached
    return hub, None


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
            description="'imagenet': pretrained, fetched from the Hugging Face Hub or read from "
            "its local cache; absent or 'none': random init",
        )
        encoder_depth: int = Field(5, ge=3, le=5)
        decoder_channels: Optional[tuple[int, ...]] = Field(
            None, description="one width per decoder block (as many as encoder_depth)"
        )

        @field_validator("encoder_weights")
        @classmethod
        def _none_spelled_out(cls, value: Optional[str]) -> Optional[str]:
            # TOML has no null: "none" lets --set turn a recipe's pretrained encoder off.
            return None if value is not None and value.lower() == "none" else value

    def build(self, info: DataInfo) -> torch.nn.Module:
        return self._build(info, pretrained=True)

    def _build(self, info: DataInfo, pretrained: bool) -> torch.nn.Module:
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
        if p.encoder_weights is None or not pretrained:
            return self._construct(cls, common, None)
        source, torch_hub_file = _weights_source(p.encoder, p.encoder_weights)
        if downloads_forbidden() and torch_hub_file is not None and not torch_hub_file.is_file():
            # torch.hub has no offline mode: it would wait on the network
            raise EncoderWeightsError(self._unavailable(source, "not cached and HF_HUB_OFFLINE=1 "
                                                                "forbids downloading them"))
        with hub_offline_from_env():
            try:
                return self._construct(cls, common, p.encoder_weights)
            except download_errors() as exc:  # hub / network / missing cache entry
                reason = ("not cached and HF_HUB_OFFLINE=1 forbids downloading them"
                          if downloads_forbidden() else f"download failed: {type(exc).__name__}")
                raise EncoderWeightsError(self._unavailable(source, reason)) from exc

    def _unavailable(self, source: str, reason: str) -> str:
        p = self.params
        return (
            f"unet: could not fetch the '{p.encoder_weights}' weights of encoder '{p.encoder}' "
            f"({reason}); they are read from {source}. Run once with network access to fill "
            "that cache (HF_HOME sets where the Hugging Face one lives), or copy it from a machine "
            "that has it, or start from random weights (remove encoder_weights from the recipe, or "
            "--set <role>.params.encoder_weights=none), or, for a teacher, load trained weights "
            "with teacher.checkpoint."
        )

    def load(self, path: Path, info: DataInfo) -> torch.nn.Module:
        """Trained weights replace the pretrained encoder's, so those are not fetched."""
        model = self._build(info, pretrained=False)
        load_weights(model, path)
        return model

    @staticmethod
    def _construct(cls, common: dict, weights: Optional[str]) -> torch.nn.Module:
        try:
            return cls(encoder_weights=weights, **common)
        except KeyError as exc:
            # smp raises KeyError for an unknown encoder or weights name; keep its list of choices.
            raise KDEngineError(f"unet: {exc.args[0] if exc.args else exc}") from exc
