"""The paper's few-shot maths: prototypes by masked average pooling (eq. 1) and cosine matching (eq. 2-3).

Labels use 0 for "unlabelled" and 1..K for the K classes. Unlabelled pixels are ignored, never
treated as background: a user who wants an "other" class labels it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_ALPHA = 20.0


class PrototypeAccumulator:
    """Accumulates eq. 1 one support window at a time, so memory never holds more than one batch.

    Per window and class: upsample the features bilinearly to the mask size and average them over the
    class's pixels. The prototype is the mean of those window means over the windows holding the class.
    """

    def __init__(self, num_classes: int, channels: int):
        self.num_classes = num_classes
        self.window_mean_sum = torch.zeros(num_classes, channels, dtype=torch.float64)
        self.windows = torch.zeros(num_classes, dtype=torch.long)
        self.pixels = torch.zeros(num_classes, dtype=torch.long)

    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """``features``: B x C x h x w; ``labels``: B x H x W integers (0 unlabelled, 1..K)."""
        features = features.float()
        labels = labels.to(features.device)
        for feature, label in zip(features, labels):
            classes = torch.arange(1, self.num_classes + 1, device=label.device)
            one_hot = (label[None] == classes[:, None, None]).float()  # K x H x W
            area = one_hot.sum((1, 2))
            if not bool((area > 0).any()):
                continue
            upsampled = F.interpolate(feature[None], label.shape, mode="bilinear", align_corners=False)[0]
            sums = torch.einsum("chw,khw->kc", upsampled, one_hot)
            present = area > 0
            means = sums[present] / area[present, None]
            self.window_mean_sum[present.cpu()] += means.double().cpu()
            self.windows += present.long().cpu()
            self.pixels += area.long().cpu()

    def prototypes(self) -> torch.Tensor:
        """K x C prototypes; rows of classes without any labelled pixel are zero (check ``pixels``)."""
        return (self.window_mean_sum / self.windows.clamp(min=1)[:, None]).float()


def match_logits(features: torch.Tensor, prototypes: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """Eq. 2: alpha times the cosine similarity of every pixel to every prototype (B x K x h x w)."""
    features = F.normalize(features.float(), dim=1)
    prototypes = F.normalize(prototypes.float().to(features.device), dim=1)
    return alpha * torch.einsum("bchw,kc->bkhw", features, prototypes)


def class_probabilities(features: torch.Tensor, prototypes: torch.Tensor, size: tuple[int, int],
                        alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """Eq. 3 at full tile size (B x K x H x W).

    Similarity is computed at feature resolution and the K class scores are upsampled, not the C-dim
    features: the same result up to interpolation (cosine is not linear, so not bit-identical), at a
    fraction of the cost, since K is a handful and C is 152-256.
    """
    logits = match_logits(features, prototypes, alpha)
    logits = F.interpolate(logits, size, mode="bilinear", align_corners=False)
    return logits.softmax(1)
