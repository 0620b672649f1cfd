"""Tensor helpers shared by the edge datasets: augmentation, label resizing, batching.

Conventions of the edge plugin:
- a training item is ``(image 3xHxW float in [0, 1], target 1xHxW float in [0, 1])``;
- an evaluation item is ``(image, {"mask": 1xHxW, "annotators": KxHxW})``: ``mask`` is the
  training-style target (for Dice), ``annotators`` holds each human (or simulated) annotator's
  binary boundary map (for ODS/OIS). :func:`collate_edges` pads mixed annotator counts with
  ``PAD`` (-1), which the metrics ignore; images of different sizes (a portrait and a landscape
  photograph) stay lists, so each is predicted and scored in its own shape and orientation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

PAD = -1.0


def resize_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear, antialiased resize of a CxHxW float image."""
    if image.shape[-2:] == (height, width):
        return image
    out = F.interpolate(image[None], size=(height, width), mode="bilinear", antialias=True,
                        align_corners=False)
    return out[0].clamp_(0.0, 1.0)


def resize_label(label: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize a CxHxW boundary map keeping one-pixel boundaries (max over each output cell).

    Bilinear or nearest resizing would fade or break thin boundaries when shrinking.
    """
    if label.shape[-2:] == (height, width):
        return label
    return F.adaptive_max_pool2d(label[None], (height, width))[0]


def random_crop_flip_resize(
    image: torch.Tensor, label: torch.Tensor, size: int, min_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random square crop (side in [min_scale, 1] x the short side), a random horizontal flip,
    then a resize to ``size`` x ``size``. Uses torch's global RNG (seeded by the engine)."""
    height, width = image.shape[-2:]
    short = min(height, width)
    scale = min_scale + (1.0 - min_scale) * torch.rand(()).item()
    side = max(1, min(short, round(scale * short)))
    top = int(torch.randint(0, height - side + 1, ()).item())
    left = int(torch.randint(0, width - side + 1, ()).item())
    image = image[:, top:top + side, left:left + side]
    label = label[:, top:top + side, left:left + side]
    if torch.rand(()).item() < 0.5:
        image, label = image.flip(-1), label.flip(-1)
    return resize_image(image, size, size), resize_label(label, size, size)


#: The colour half of the "strong" views (built at import: building it on first use would draw
#: from the RNG inside the first seeded item, and that item's view would not replay).
COLOUR_JITTER = v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.05)

#: ``augment`` of the edge datasets' train images: "crop_flip" (a random crop, flip and resize) or
#: "strong" (that, then a quarter turn and colour jitter): the strongly augmented views a patient,
#: consistent teacher is distilled on (Beyer et al. 2022). Teacher and student always see the same
#: view: it is drawn once per (epoch, image), replayed for the teacher-output cache.
AUGMENTS = ("crop_flip", "strong")


def train_view(image: torch.Tensor, label: torch.Tensor, size: int, min_scale: float,
               augment: str = "crop_flip") -> tuple[torch.Tensor, torch.Tensor]:
    """One training view of ``image`` (3xHxW in [0, 1]) and its ``label``, under ``augment``
    (see :data:`AUGMENTS`). Uses torch's global RNG (seeded by the engine per epoch and image)."""
    image, label = random_crop_flip_resize(image, label, size, min_scale)
    if augment == "strong":
        turns = int(torch.randint(0, 4, ()).item())  # edges have no up: any quarter turn is a true view
        image, label = image.rot90(turns, (-2, -1)), label.rot90(turns, (-2, -1))
        image = COLOUR_JITTER(image).clamp(0.0, 1.0)  # the label is where the edges are: unchanged
    return image.contiguous(), label.contiguous()


def _pad_to(t: torch.Tensor, channels: int, height: int, width: int, value: float) -> torch.Tensor:
    c, h, w = t.shape
    if (c, h, w) == (channels, height, width):
        return t
    out = t.new_full((channels, height, width), value)
    out[:c, :h, :w] = t
    return out


def collate_edges(batch):
    """Stack a batch of same-size items (padding annotator counts with ``PAD``); items of
    different sizes come back as ``(list of images, list of targets)``.

    Padding a portrait image to a landscape batch (or transposing it) would change what the model
    sees and what the figures show; a list keeps every image as it is, and
    :meth:`EdgeProvider.predict` and the metrics take lists one image at a time.
    """
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    if any(i.shape[-2:] != images[0].shape[-2:] for i in images):
        return images, targets
    height, width = images[0].shape[-2:]
    inputs = torch.stack(images)
    if isinstance(targets[0], dict):
        k = max(t["annotators"].shape[0] for t in targets)
        return inputs, {
            "mask": torch.stack([t["mask"] for t in targets]),
            "annotators": torch.stack(
                [_pad_to(t["annotators"], k, height, width, PAD) for t in targets]
            ),
        }
    return inputs, torch.stack([_pad_to(t, t.shape[0], height, width, PAD) for t in targets])


def per_image_batches(logits, targets):
    """``(logits, targets)`` as batches the metrics update on: the batch itself, or, for lists of
    images of different sizes, one batch of one per image."""
    if isinstance(logits, torch.Tensor):
        return [(logits, targets)]
    out = []
    for logit, target in zip(logits, targets):
        target = {k: v[None] for k, v in target.items()} if isinstance(target, dict) else target[None]
        out.append((logit[None], target))
    return out


def eval_target(mask: torch.Tensor, annotators: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"mask": mask.float(), "annotators": annotators.float()}


def split_targets(targets) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask B x 1 x H x W, annotators B x K x H x W)`` from either target format."""
    if isinstance(targets, dict):
        return targets["mask"], targets["annotators"]
    annotators = torch.where(targets < 0, targets, (targets >= 0.5).to(targets.dtype))
    return targets, annotators
