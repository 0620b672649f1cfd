"""Classification models from timm or torchvision, with a CIFAR stem option and pretrained weights.

Pretrained weights come through each library's own mechanism: timm's ``pretrained`` (the Hugging
Face Hub, ``hf-hub:org/name`` model names, or a local file through ``pretrained_cfg_overlay``) and
torchvision's weight enums (``torch.hub``). The same head rule holds for both: the pretrained
classifier is kept when the dataset has as many classes as the weights, and replaced by a freshly
initialised one otherwise. Offline (``HF_HUB_OFFLINE=1``) without the weights cached, ``build``
fails at once with a :class:`WeightsUnavailableError` that says where it looked.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from torch import nn

from kdengine import (CheckpointError, DataInfo, KDEngineError, ModelFactory, Params, WeightsUnavailableError,
                      load_weights, read_state_dict)
from kdengine import (download_errors, downloads_forbidden, hub_cache_dir, hub_offline_from_env,
                      torch_hub_cached_file)


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


def keep_resolution(model: nn.Module, paths: list[str], what: str) -> nn.Module:
    """Stride 1 for the named convolutions: a CIFAR variant that downsamples later than the
    ImageNet architecture (the feature maps of the following layers grow accordingly)."""
    from kdengine import resolve_module

    for path in paths:
        module = resolve_module(model, path, f"{what} (stride_one)")
        if not isinstance(module, nn.Conv2d):
            raise KDEngineError(f"{what}: stride_one '{path}' is a {type(module).__name__}, not a convolution")
        module.stride = (1, 1)
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


def _suggest(name: str, names: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, names, n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""


#: What a user can do instead when pretrained weights cannot be had.
CACHE_INSTEAD = ("Fill the cache once with network access (or point HF_HOME at a cache that holds "
                 "them)")
TEACHER_INSTEAD = "or, for a teacher, load trained weights with teacher.checkpoint."


class TimmModel(ModelFactory):
    """Any timm architecture by name (timm.list_models), optionally pretrained and with a CIFAR stem."""

    class Params(Params):
        model: str = Field(min_length=1, description="timm model name (resnet101), with a pretrained "
                           "tag (resnet50.a1_in1k), or a Hub model (hf-hub:org/name)")
        cifar_stem: bool = False
        pretrained: bool = Field(False, description="start from timm's pretrained weights (downloaded "
                                 "from the Hugging Face Hub, or read from its cache)")
        pretrained_file: str | None = Field(None, min_length=1, description="a local file of "
                                            "pretrained weights for this architecture (implies pretrained)")
        drop_rate: float = Field(0.0, ge=0, lt=1)

    def build(self, info: DataInfo) -> nn.Module:
        p = self.params
        return self._create(info, pretrained=p.pretrained or p.pretrained_file is not None)

    def load(self, path: Path, info: DataInfo) -> nn.Module:
        """Trained weights replace the pretrained ones, so those are not fetched."""
        model = self._create(info, pretrained=False)
        load_weights(model, path)
        return model

    def _create(self, info: DataInfo, pretrained: bool) -> nn.Module:
        import timm
        from timm.models import parse_model_name

        p = self.params
        try:
            source, _ = parse_model_name(p.model)
        except ValueError as exc:
            raise KDEngineError(f"timm: {exc}") from None
        if source is None and not timm.is_model(p.model):
            raise KDEngineError(f"timm has no model '{p.model}'" + _suggest(p.model, timm.list_models()))
        cfg = _pretrained_cfg(p.model) if source is None else None
        kwargs = dict(num_classes=_require_classes(info), in_chans=info.in_channels, drop_rate=p.drop_rate)
        if pretrained and p.pretrained_file is not None:
            if source is not None:
                raise KDEngineError(f"timm '{p.model}': pretrained_file works with timm's own model "
                                    f"names; a {source} model brings its own weights")
            kwargs["pretrained_cfg_overlay"] = _file_overlay(p.model, cfg, Path(p.pretrained_file))
        elif pretrained and source is None:
            _check_timm_weights(p.model, cfg)
        with hub_offline_from_env():
            try:
                model = timm.create_model(p.model, pretrained=pretrained, **kwargs)
            except download_errors() as exc:
                raise WeightsUnavailableError(_timm_unavailable(p.model, source, exc)) from exc
            except RuntimeError as exc:
                if p.pretrained_file is not None and pretrained:
                    raise CheckpointError(
                        f"{p.pretrained_file}: pretrained_file does not fit timm '{p.model}': "
                        f"{str(exc).splitlines()[0]} (weights that kdengine trained for this very "
                        "model, CIFAR stem and head included, load as teacher.checkpoint)"
                    ) from exc
                raise
        return apply_cifar_stem(model) if p.cifar_stem else model


def _pretrained_cfg(model: str):
    """timm's pretrained config for a registry name, or None; a clear error for an unknown tag."""
    import timm

    try:
        return timm.models.get_pretrained_cfg(model)
    except RuntimeError as exc:  # an unknown pretrained tag
        tags = timm.list_pretrained(model.split(".")[0] + ".*")
        raise KDEngineError(f"timm '{model}': {str(exc).rstrip('.')}; tagged weights: {', '.join(tags) or 'none'}") from None


def _file_overlay(model: str, cfg, path: Path) -> dict:
    """timm's own way to take pretrained weights from a local file, with the file's class count.

    timm keeps the pretrained classifier only when the model's class count equals the
    ``num_classes`` of the pretrained config; for a local file that count is the file's own
    (a 100-class fine-tune, say), not that of the weights timm would have downloaded.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: pretrained_file not found (weights for timm '{model}')")
    state = read_state_dict(path)  # refuses pickled code before timm reads the file
    classifier = getattr(cfg, "classifier", None) or ()
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    rows = next((state[f"{n}.weight"].shape[0] for n in names if f"{n}.weight" in state), 0)
    return dict(file=str(path), num_classes=int(rows))


def _check_timm_weights(model: str, cfg) -> None:
    """Stop now when timm has no weights for the name, or (offline) when they are only a URL away."""
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise KDEngineError(f"timm '{model}' has no pretrained weights (see timm.list_pretrained()); "
                            "set pretrained = false, or give pretrained_file")
    if not cfg.hf_hub_id and cfg.url and downloads_forbidden():
        cached = torch_hub_cached_file(cfg.url)
        if not cached.is_file():
            raise WeightsUnavailableError(
                f"timm '{model}': could not load pretrained weights: they are not cached at {cached} "
                "and HF_HUB_OFFLINE=1 forbids downloading them. Copy the file there (TORCH_HOME sets "
                f'the folder), give it with pretrained_file = "...", {TEACHER_INSTEAD}'
            )


def _timm_unavailable(model: str, source: str | None, exc: BaseException) -> str:
    import timm

    if source == "local-dir":
        return f"timm '{model}': could not read the model folder ({type(exc).__name__}: {exc})"
    if source == "hf-hub":
        what = f"the config and weights of Hub repo {model.partition(':')[2]}"
        instead = (f"{CACHE_INSTEAD}, name the timm architecture instead and give the repo's weights "
                   f'file with pretrained_file = "...", {TEACHER_INSTEAD}')
    else:
        repo = getattr(timm.models.get_pretrained_cfg(model), "hf_hub_id", None)
        what = f"its weights (Hub repo {repo})" if repo else "its weights"
        instead = (f'{CACHE_INSTEAD}, give the weights as a local file with pretrained_file = "...", '
                   f"{TEACHER_INSTEAD}")
    if downloads_forbidden():
        reason = (f"{what} are not in the Hugging Face cache ({hub_cache_dir()}) and HF_HUB_OFFLINE=1 "
                  "forbids downloading them")
    else:
        first_line = (str(exc).splitlines() or [""])[0]
        reason = f"{what} could not be downloaded ({type(exc).__name__}: {first_line})"
    return f"timm '{model}': could not load pretrained weights: {reason}. {instead}"


class TorchvisionModel(ModelFactory):
    """Any torchvision classification architecture by name, with width multipliers where the
    architecture has one (MobileNetV2 0.5x, 1.0x), optional pretrained weights and a CIFAR stem."""

    class Params(Params):
        model: str = Field(min_length=1, description="torchvision model name, e.g. mobilenet_v2")
        width_mult: float | None = Field(None, gt=0, le=4)
        cifar_stem: bool = False
        weights: str | None = Field(None, min_length=1, description="pretrained weights: DEFAULT or a "
                                    "name of the model's weight enum (IMAGENET1K_V2); torch.hub caches them")
        round_nearest: int | None = Field(None, ge=1, description="channel counts rounded to a multiple of "
                                          "this (MobileNetV2: 8; CRD's CIFAR variant: 4, or 12 channels stay 12)")
        stride_one: list[str] = Field([], description="module paths of convolutions whose stride becomes 1, "
                                      "after the CIFAR stem (CRD's CIFAR MobileNetV2: features.2.conv.1.0)")

    def build(self, info: DataInfo) -> nn.Module:
        return self._create(info, self.params.weights)

    def load(self, path: Path, info: DataInfo) -> nn.Module:
        """Trained weights replace the pretrained ones, so those are not fetched."""
        model = self._create(info, None)
        load_weights(model, path)
        return model

    def _create(self, info: DataInfo, weights_name: str | None) -> nn.Module:
        import torchvision

        p = self.params
        available = torchvision.models.list_models(module=torchvision.models)
        if p.model not in available:
            raise KDEngineError(f"torchvision has no model '{p.model}'" + _suggest(p.model, available))
        num_classes = _require_classes(info)
        kwargs = {} if p.width_mult is None else {"width_mult": p.width_mult}
        if p.round_nearest is not None:
            kwargs["round_nearest"] = p.round_nearest
        if weights_name is None:
            model = self._get_model(p.model, num_classes=num_classes, **kwargs)
        else:
            weights = _torchvision_weights(p.model, weights_name)
            model = _pretrained_torchvision(p.model, weights, kwargs)
            if len(weights.meta.get("categories") or ()) != num_classes:
                fresh = self._get_model(p.model, num_classes=num_classes, **kwargs)
                replace_head(model, fresh)
        set_input_channels(model, info.in_channels)
        model = apply_cifar_stem(model) if p.cifar_stem else model
        return keep_resolution(model, p.stride_one, f"torchvision '{p.model}'")

    @staticmethod
    def _get_model(name: str, **kwargs) -> nn.Module:
        import torchvision

        try:
            return torchvision.models.get_model(name, **kwargs)
        except TypeError as exc:
            raise KDEngineError(f"torchvision '{name}' does not take these params: {exc}") from None


def _torchvision_weights(model: str, name: str):
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(model)
    except ValueError:
        raise KDEngineError(f"torchvision '{model}' has no pretrained weights") from None
    try:
        return enum.verify(name)
    except KeyError:
        choices = ", ".join(["DEFAULT"] + [w.name for w in enum])
        raise KDEngineError(f"torchvision '{model}' has no weights '{name}'; choose one of: {choices}") from None


def _pretrained_torchvision(model: str, weights, kwargs: dict) -> nn.Module:
    """torchvision's own builder with ``weights=``; offline it fails before any network call."""
    import torchvision

    cached = torch_hub_cached_file(weights.url)
    instead = f"Copy the file there (TORCH_HOME sets the folder), {TEACHER_INSTEAD}"
    if downloads_forbidden() and not cached.is_file():
        raise WeightsUnavailableError(
            f"torchvision '{model}' weights {weights}: not cached at {cached} and HF_HUB_OFFLINE=1 "
            f"forbids downloading them. " + instead
        )
    try:
        return torchvision.models.get_model(model, weights=weights, **kwargs)
    except download_errors() as exc:
        raise WeightsUnavailableError(
            f"torchvision '{model}' weights {weights}: could not be downloaded from {weights.url} "
            f"({type(exc).__name__}: {exc}). " + instead
        ) from exc
    except (RuntimeError, ValueError, TypeError) as exc:  # e.g. width_mult = 0.5 with 1.0x weights
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise KDEngineError(f"torchvision '{model}' weights {weights} could not be loaded with "
                            f"params {kwargs or '{}'}: {' '.join(lines[:2])}") from None


def replace_head(model: nn.Module, fresh: nn.Module) -> None:
    """Swap in ``fresh``'s version of every module whose own parameters changed shape: the
    classifier (and auxiliary classifiers) that a different class count resizes. The modules come
    from the same architecture built for the dataset's class count, so they carry its own init."""
    fresh_modules = dict(fresh.named_modules())
    swapped = []
    for name, module in list(model.named_modules()):
        other = fresh_modules.get(name)
        if other is None or not name or any(name.startswith(done + ".") for done in swapped):
            continue
        ours = {k: v.shape for k, v in module.named_parameters(recurse=False)}
        theirs = {k: v.shape for k, v in other.named_parameters(recurse=False)}
        if ours and ours != theirs:
            parent, attr = _parent_of(model, module)
            setattr(parent, attr, other)
            swapped.append(name)
    if not swapped:
        raise KDEngineError("could not find the classifier to resize for the dataset's classes")
