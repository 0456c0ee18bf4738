"""One draw, any target, checked by hand: a known CutMix box and a known ResizeMix patch, forced
through ``apply_params``, and the boxes, keypoints and class maps they must give; losses for the
new target forms. (Every mixer's shapes and invariants: tests/test_mixer_contract.py.)"""

from __future__ import annotations

import pytest
import torch

import openmix
from openmix.losses import dense_cross_entropy, mixup_cross_entropy, sparse_cross_entropy

SIDE = 10
FLIP = torch.tensor([1, 0])


def forced(name: str, lo: list[int], hi: list[int]) -> openmix.MixOutput:
    """Two 10x10 images mixed with their flip partner through the patch rows ``[lo0, hi0)`` and
    columns ``[lo1, hi1)``, given as the host box of a batch-mode draw."""
    mixer = openmix.build(name)
    area = (hi[0] - lo[0]) * (hi[1] - lo[1])
    lam = 1.0 - area / SIDE**2
    params = {"lam": torch.full((2,), lam), "index": FLIP, "batch_lam": lam,
              "lo": torch.tensor([lo]), "hi": torch.tensor([hi])}
    return mixer.apply_params(torch.rand(2, 1, SIDE, SIDE), None, params)


def test_cutmix_boxes_are_cut_to_what_stays_visible():
    out = forced("cutmix", lo=[2, 2], hi=[6, 6])  # the partner shows in rows 2-5, columns 2-5
    own = torch.tensor([[0.0, 0.0, 4.0, 4.0],   # 4 of its 16 pixels covered: stays whole, 0.75 visible
                        [3.0, 3.0, 5.0, 5.0],   # inside the cut: gone
                        [0.0, 2.0, 4.0, 6.0]])  # its right half covered: cut to its left half
    boxes = torch.stack([own, torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)])  # sample 1: a whole-image box
    mixed, valid, visible = out.boxes(boxes, min_visible=0.1)
    torch.testing.assert_close(mixed[0, :3], torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 0.0, 0.0],
                                                           [0.0, 2.0, 2.0, 6.0]]))
    torch.testing.assert_close(visible[0, :3], torch.tensor([0.75, 0.0, 0.5]))
    assert valid[0, :3].tolist() == [True, False, True]
    # sample 0's partner (sample 1) brings its whole-image box, cut to the patch: 16 of 100 pixels
    torch.testing.assert_close(mixed[0, 3], torch.tensor([2.0, 2.0, 6.0, 6.0]))
    torch.testing.assert_close(visible[0, 3], torch.tensor(0.16))
    assert not out.boxes(boxes, min_visible=0.25)[1][0, 3]  # under a stricter threshold it is dropped


def test_resizemix_brings_the_partners_boxes_scaled_into_the_patch():
    out = forced("resizemix", lo=[2, 4], hi=[6, 8])  # the partner shrunk into rows 2-5, columns 4-7
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0]], [[0.0, 0.0, 5.0, 5.0]]])
    mixed, valid, visible = out.boxes(boxes)
    torch.testing.assert_close(mixed[0, 1], torch.tensor([4.0, 2.0, 6.0, 4.0]))  # sample 1's half-size box, x 0.4
    torch.testing.assert_close(mixed[1, 1], torch.tensor([4.0, 2.0, 8.0, 6.0]))  # sample 0's whole image
    assert bool(valid[:, 1].all()) and bool((visible[:, 1] == 1).all())
    torch.testing.assert_close(visible[0, 0], torch.tensor(0.84))  # the sample keeps 84 of its 100 pixels


def test_keypoints_are_visible_where_their_image_shows():
    cut = forced("cutmix", lo=[2, 2], hi=[6, 6])
    points = torch.tensor([[[3.0, 3.0], [8.0, 8.0]], [[3.0, 3.0], [8.0, 8.0]]])
    moved, shown = cut.keypoints(points)
    assert shown[0].tolist() == [False, True, True, False]  # own (3, 3) is covered; the partner's shows there
    paste = forced("resizemix", lo=[2, 4], hi=[6, 8])
    moved, shown = paste.keypoints(torch.tensor([[[5.0, 5.0]], [[5.0, 5.0]]]))
    torch.testing.assert_close(moved[0, 1], torch.tensor([6.0, 4.0]))  # the partner's centre, in the patch
    assert shown[0].tolist() == [False, True]  # own (x 5, y 5) lies in the patch (columns 4-7, rows 2-5)


def test_a_class_map_follows_the_resized_partner():
    out = forced("resizemix", lo=[0, 0], hi=[5, 5])
    seg = torch.zeros(2, SIDE, SIDE, dtype=torch.long)
    seg[1, :5] = 7  # sample 1: top half class 7, bottom half class 0
    mixed = out.class_map(seg)
    # sample 0 shows sample 1 shrunk by 2 into its top-left quarter: top rows 0-2 of it are class 7
    assert mixed[0, :3, :5].eq(7).all() and mixed[0, 3:5, :5].eq(0).all() and mixed[0, :, 5:].eq(0).all()


def test_sparse_and_dense_losses_equal_their_dense_forms():
    logits = torch.randn(4, 6)
    labels, weights = torch.tensor([[0, 1], [2, 2], [5, 3], [4, 0]]), torch.tensor([[0.7, 0.3]] * 4)
    expected = mixup_cross_entropy(logits, labels[:, 0], labels[:, 1], torch.full((4,), 0.7))
    torch.testing.assert_close(sparse_cross_entropy(logits, labels, weights), expected)
    maps = torch.softmax(torch.randn(2, 3, 4, 4), 1)
    per_pixel = -(maps * torch.log_softmax(torch.zeros(2, 3, 4, 4), 1)).sum(1).mean()
    torch.testing.assert_close(dense_cross_entropy(torch.zeros(2, 3, 4, 4), maps), per_pixel)


def test_a_mixer_without_labels_mixes_only_the_inputs():
    out = openmix.build("cutmix", seed=0)(torch.rand(3, 3, 8, 8))  # no num_classes needed
    assert out.y is None and out.x.shape == (3, 3, 8, 8)
    with pytest.raises(ValueError, match="labels must be class ids"):
        out.sparse(torch.rand(3))


def test_openmix_show_draws_the_targets_of_each_draw(tmp_path):
    from openmix.cli.show import gallery
    from openmix.targets import silhouettes

    images = torch.zeros(4, 1, 12, 12)
    images[:, :, 3:9, 2:10] = 0.8
    seg, boxes = silhouettes(images, torch.arange(4))
    assert boxes[0, 0].tolist() == [2.0, 3.0, 10.0, 9.0] and int(seg[3].max()) == 4
    path = gallery(images, torch.arange(4), ["cutmix", "mixup"], 4, tmp_path / "targets.png", targets=True)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_boxes_outside_the_image_are_a_clear_error():
    out = forced("cutmix", lo=[2, 2], hi=[6, 6])
    with pytest.raises(ValueError, match=r"box 0 of sample 1, \[0.0, 0.0, 11.0, 4.0\].*10x10"):
        out.boxes(torch.tensor([[[0.0, 0.0, 4.0, 4.0]], [[0.0, 0.0, 11.0, 4.0]]]))
    # padding rows (not valid) may hold anything
    out.boxes(torch.tensor([[[0.0, 0.0, 4.0, 4.0]], [[-1.0, -1.0, -1.0, -1.0]]]), torch.tensor([[True], [False]]))
