"""The keys of a batch: named once, used everywhere.

Data modules build batches as dicts with these keys (graph data modules hand PyG batches instead);
methods, callbacks and evaluators read them through these names, never through bare strings.
"""

from __future__ import annotations

#: ``(B, 3, H, W)`` normalised images.
IMAGE = "image"
#: ``(B, 3, H, W)`` a second, independently augmented view of the same images (``views: 2``).
IMAGE_VIEW2 = "image_view2"
#: ``(B, 1, H, W)`` foreground masks in ``{0, 1}``, transformed with the first view.
MASK = "mask"
#: ``(B, N, 3, H, W)`` randomly augmented test-time views of each test image (``test_views: N``; TPT).
IMAGE_VIEWS = "image_views"
#: ``(B, K, 3, H, W)`` pre-generated views of each test image (DiffTPT's diffusion samples), read from a folder.
GENERATED_VIEWS = "generated_views"
#: ``(B,)`` class labels.
LABEL = "label"
#: ``(B,)`` position of each sample in its dataset (for per-sample state such as cached masks).
INDEX = "index"
#: ``(B,)`` bool: the sample's label is a pseudolabel (pseudolabel prompt tuning; GRIP, FPL, IFPL).
PSEUDO_LABELLED = "pseudo_labelled"
#: ``(B,)`` the continual-learning task each sample belongs to.
TASK = "task"
#: ``(B, D)`` precomputed frozen image features of the batch's images (a feature cache puts them there).
IMAGE_FEATURES = "image_features"
#: ``(B, N, 3)`` point clouds (coordinates).
POINTS = "points"
#: ``(B, V, N, 3)`` V voting views of each test cloud (Point-MAE/IDPT's test-time voting; ``test_votes: V``).
POINT_VOTES = "point_votes"
#: ``list[str]`` raw texts (methods tokenize them).
TEXT = "text"
#: ``list[str]`` image captions (image-text pairs).
CAPTION = "caption"
#: ``(B, T)`` token ids and attention mask, added by text methods when they tokenize.
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"


def image_view(view: int) -> str:
    """The key of the ``view``-th view (1: :data:`IMAGE`)."""
    return IMAGE if view == 1 else f"image_view{view}"
