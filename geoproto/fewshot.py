"""The paper's few-shot maths: prototypes by masked average pooling (eq. 1) and cosine matching (eq. 2-3).

Labels use 0 for "unlabelled" and 1..K for the K classes. Unlabelled pixels are ignored, never
treated as background: a user who wants an "other" class labels it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .validation import DEFAULT_ALPHA
# Features come on a registered grid (``models.runtime``): cell (i, j) describes the pixel block
# [8i, 8i + 8) x [8j, 8j + 8) of its window.
FEATURE_STRIDE = 8


def window_class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Eq. 1 per window: features (B x C x h x w on the registered grid) upsampled bilinearly to the
    labels' size (B x H x W, 0 unlabelled, 1..K) and averaged over each class's pixels. Returns
    (B x K x C means, B x K pixel counts); differentiable, so training and inference share it.

    Upsampling is linear, so the masked sum of upsampled features equals the features weighted by the
    mask pulled back to feature resolution (``pull_back_labels``): the same means, without materialising
    C x H x W upsampled features.
    """
    pulled_back, area = pull_back_labels(labels, num_classes, features)
    return class_means(features, pulled_back, area), area


def pull_back_labels(labels: torch.Tensor, num_classes: int, features: torch.Tensor):
    """Each class's pixels (``labels``: B x H x W, 0 unlabelled, 1..K) pulled back to the features' grid
    through the bilinear upsampling that scores go through (its transpose): how much each class's pixels
    pull on each feature cell (B x K x h x w, in the features' dtype), and the class's pixel count (B x K).
    Eq. 1's means and a head's training cells both weigh features by it."""
    classes = torch.arange(1, num_classes + 1, device=labels.device)
    one_hot = (labels[:, None] == classes[None, :, None, None]).to(features.dtype)  # B x K x H x W
    rows = _upsampling_matrix(labels.shape[-2], features.shape[-2], features)  # H x h
    cols = _upsampling_matrix(labels.shape[-1], features.shape[-1], features)  # W x w
    return rows.T @ one_hot @ cols, one_hot.sum((2, 3))


def class_means(features: torch.Tensor, pulled_back: torch.Tensor, area: torch.Tensor) -> torch.Tensor:
    """Eq. 1 from pulled-back labels (``pull_back_labels``): B x K x C class means (zero where a class
    has no pixel)."""
    return torch.einsum("bchw,bkhw->bkc", features, pulled_back) / area.clamp(min=1)[..., None]


def _upsampling_matrix(out_size: int, cells: int, like: torch.Tensor) -> torch.Tensor:
    """The out_size x cells matrix of ``upsample_scores`` along one axis: linear upsampling by exactly
    FEATURE_STRIDE, cropped to out_size; bilinear upsampling is this along rows times along columns."""
    identity = torch.eye(cells, dtype=like.dtype, device=like.device)[None]
    upsampled = F.interpolate(identity, scale_factor=FEATURE_STRIDE, mode="linear", align_corners=False)
    return upsampled[0].T[:out_size]


def masked_average_prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Eq. 1 over the K shots of an episode: per-shot class means averaged over the shots holding the
    class (K x C; zero rows for absent classes), as the paper trains."""
    means, area = window_class_means(features, labels, num_classes)
    present = (area > 0).to(means.dtype)
    return (means * present[..., None]).sum(0) / present.sum(0).clamp(min=1)[:, None]


class PrototypeAccumulator:
    """Eq. 1 over a user's support, accumulated one window at a time: each class's mean feature over all
    its labelled pixels.

    Pixels are weighted equally, not windows: the windows a raster is cut into are not shots, and a
    window holding a sliver of a class must not weigh as much as one holding thousands of its pixels.
    Callers label each pixel in one window only (the window whose core owns it), so the prototypes do
    not depend on the tile size or overlap.
    """

    def __init__(self, num_classes: int, channels: int):
        self.num_classes = num_classes
        self.feature_sum = torch.zeros(num_classes, channels, dtype=torch.float64)
        self.pixels = torch.zeros(num_classes, dtype=torch.long)

    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """``features``: B x C x h x w; ``labels``: B x H x W integers (0 unlabelled, 1..K)."""
        labels = labels.to(features.device)
        for feature, label in zip(features.float(), labels):
            self.add_window(feature[None], *pull_back_labels(label[None], self.num_classes, feature[None]))

    def add_window(self, features: torch.Tensor, pulled_back: torch.Tensor, area: torch.Tensor) -> None:
        """One window: its float features (1 x C x h x w) and its labels pulled back (``pull_back_labels``),
        which a subclass may reuse rather than compute again."""
        means = class_means(features, pulled_back, area)
        self.feature_sum += (means[0] * area[0, :, None]).cpu().double()
        self.pixels += area[0].long().cpu()

    def prototypes(self) -> torch.Tensor:
        """K x C prototypes; rows of classes without any labelled pixel are zero (check ``pixels``)."""
        return (self.feature_sum / self.pixels.clamp(min=1)[:, None]).float()


def match_logits(features: torch.Tensor, prototypes: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """Eq. 2: alpha times the cosine similarity of every pixel to every prototype (B x K x h x w)."""
    features = F.normalize(features.float(), dim=1)
    prototypes = F.normalize(prototypes.float().to(features.device), dim=1)
    return alpha * torch.einsum("bchw,kc->bkhw", features, prototypes)


def upsample_scores(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-cell scores (B x K x h x w on the registered grid) at pixel resolution (B x K x H x W):
    bilinear upsampling by exactly FEATURE_STRIDE, cropped to the window. Any other scale would move
    features away from the pixels they describe (up to 15 px at stride 16)."""
    upsampled = F.interpolate(scores, scale_factor=FEATURE_STRIDE, mode="bilinear", align_corners=False)
    return upsampled[..., :size[0], :size[1]]


def class_scores(features: torch.Tensor, prototypes: torch.Tensor, size: tuple[int, int],
                 alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """Eq. 2 at full tile size (B x K x H x W logits); their argmax is the label, no softmax needed.

    Similarity is computed at feature resolution and the K class scores are upsampled, not the C-dim
    features: the same result up to interpolation (cosine is not linear, so not bit-identical), at a
    fraction of the cost, since K is a handful and C is over a hundred.
    """
    return upsample_scores(match_logits(features, prototypes, alpha), size)


def class_probabilities(features: torch.Tensor, prototypes: torch.Tensor, size: tuple[int, int],
                        alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """Eq. 3 at full tile size (B x K x H x W)."""
    return class_scores(features, prototypes, size, alpha).softmax(1)
