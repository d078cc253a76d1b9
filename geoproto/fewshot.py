"""The paper's few-shot maths: prototypes by masked average pooling (eq. 1) and cosine matching (eq. 2-3).

Labels use 0 for "unlabelled" and 1..K for the K classes. Unlabelled pixels are ignored, never
treated as background: a user who wants an "other" class labels it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_ALPHA = 20.0


def window_class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Eq. 1 per window: features (B x C x h x w) upsampled bilinearly to the labels' size (B x H x W,
    0 unlabelled, 1..K) and averaged over each class's pixels. Returns (B x K x C means, B x K pixel
    counts); differentiable, so training and inference share it.

    Upsampling is linear, so the masked sum of upsampled features equals the features weighted by the
    mask pulled back to feature resolution (the transposed interpolation): the same means, without
    materialising C x H x W upsampled features (10x faster on CPU for a 417 px window, 100 MB less).
    """
    classes = torch.arange(1, num_classes + 1, device=labels.device)
    one_hot = (labels[:, None] == classes[None, :, None, None]).to(features.dtype)  # B x K x H x W
    rows = _interpolation_weights(labels.shape[-2], features.shape[-2], features)  # H x h
    cols = _interpolation_weights(labels.shape[-1], features.shape[-1], features)  # W x w
    pulled_back = rows.T @ one_hot @ cols  # B x K x h x w
    area = one_hot.sum((2, 3))
    means = torch.einsum("bchw,bkhw->bkc", features, pulled_back) / area.clamp(min=1)[..., None]
    return means, area


def _interpolation_weights(out_size: int, in_size: int, like: torch.Tensor) -> torch.Tensor:
    """The out_size x in_size matrix of 1-D linear upsampling (align_corners=False); bilinear
    upsampling is this along rows times this along columns."""
    identity = torch.eye(in_size, dtype=like.dtype, device=like.device)[None]
    return F.interpolate(identity, size=out_size, mode="linear", align_corners=False)[0].T


def masked_average_prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Eq. 1 over a set of support windows: per-window class means averaged over the windows holding
    the class (K x C; zero rows for absent classes)."""
    means, area = window_class_means(features, labels, num_classes)
    present = (area > 0).to(means.dtype)
    return (means * present[..., None]).sum(0) / present.sum(0).clamp(min=1)[:, None]


class PrototypeAccumulator:
    """Eq. 1 accumulated one window at a time, so memory never holds more than one window upsampled."""

    def __init__(self, num_classes: int, channels: int):
        self.num_classes = num_classes
        self.window_mean_sum = torch.zeros(num_classes, channels, dtype=torch.float64)
        self.windows = torch.zeros(num_classes, dtype=torch.long)
        self.pixels = torch.zeros(num_classes, dtype=torch.long)

    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """``features``: B x C x h x w; ``labels``: B x H x W integers (0 unlabelled, 1..K)."""
        labels = labels.to(features.device)
        for feature, label in zip(features.float(), labels):
            means, area = window_class_means(feature[None], label[None], self.num_classes)
            present = (area[0] > 0).cpu()
            self.window_mean_sum[present] += means[0].cpu().double()[present]
            self.windows += present.long()
            self.pixels += area[0].long().cpu()

    def prototypes(self) -> torch.Tensor:
        """K x C prototypes; rows of classes without any labelled pixel are zero (check ``pixels``)."""
        return (self.window_mean_sum / self.windows.clamp(min=1)[:, None]).float()


def match_logits(features: torch.Tensor, prototypes: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """Eq. 2: alpha times the cosine similarity of every pixel to every prototype (B x K x h x w)."""
    features = F.normalize(features.float(), dim=1)
    prototypes = F.normalize(prototypes.float().to(features.device), dim=1)
    return alpha * torch.einsum("bchw,kc->bkhw", features, prototypes)


def class_scores(features: torch.Tensor, prototypes: torch.Tensor, size: tuple[int, int],
                 alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """Eq. 2 at full tile size (B x K x H x W logits); their argmax is the label, no softmax needed.

    Similarity is computed at feature resolution and the K class scores are upsampled, not the C-dim
    features: the same result up to interpolation (cosine is not linear, so not bit-identical), at a
    fraction of the cost, since K is a handful and C is 152-256.
    """
    logits = match_logits(features, prototypes, alpha)
    return F.interpolate(logits, size, mode="bilinear", align_corners=False)


def class_probabilities(features: torch.Tensor, prototypes: torch.Tensor, size: tuple[int, int],
                        alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """Eq. 3 at full tile size (B x K x H x W)."""
    return class_scores(features, prototypes, size, alpha).softmax(1)
