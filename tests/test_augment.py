import math

import pytest
import torch

from semiseg.augment import StrongAugment, StrongViews, cutmix_boxes, mix_with_reversed
from semiseg.errors import SemisegError
from semiseg.models.normalize import normalize
from semiseg.models.specs import IMAGENET_MEAN, IMAGENET_STD

NORM = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}


def _weak_pair(b: int = 4, size: int = 28, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (b, 3, size, size), generator=g, dtype=torch.uint8)
    # Identical dates: any difference after augmentation must come from independent draws.
    return img, img.clone()


def test_normalize_divides_uint8_by_255_and_applies_mean_std():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = normalize(x, **NORM)
    expected = [(1.0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert out.dtype == torch.float32
    assert torch.allclose(out[0, :, 0, 0], torch.tensor(expected))
    assert torch.allclose(normalize(x.float() / 255.0, **NORM), out)


def test_normalize_rejects_band_count_mismatch():
    with pytest.raises(SemisegError, match="channels"):
        normalize(torch.zeros(1, 4, 2, 2, dtype=torch.uint8), **NORM)


def test_strong_views_differ_per_date_but_share_the_cutmix_box():
    a, b = _weak_pair()
    views = StrongViews(**NORM, grayscale_p=0.0, cutmix_p=1.0)
    view = views((a, b), generator=torch.Generator().manual_seed(1))
    s_a, s_b = view.images
    assert s_a.shape == (4, 3, 28, 28) and s_a.dtype == torch.float32
    assert not torch.allclose(s_a, s_b)  # independent photometric draws per date
    assert view.box.shape == (4, 28, 28) and view.box.dtype == torch.bool
    assert view.box.flatten(1).any(1).all()  # p=1: every sample has a box
    # Each date is mixed with its own reversed batch inside the one shared box: recompute with the same box.
    aug = StrongViews(**NORM, grayscale_p=0.0, cutmix_p=0.0)(
        (a, b), generator=torch.Generator().manual_seed(1)
    )  # same photometric draws, no box
    inside = view.box[:, None]
    expected = [torch.where(inside, x.flip(0), x) for x in aug.images]
    assert torch.allclose(expected[0], s_a) and torch.allclose(expected[1], s_b)


def test_strong_augment_is_reproducible_with_a_generator_and_leaves_global_rng_alone():
    a, b = _weak_pair()
    x = (a.float() / 255, b.float() / 255)
    aug = StrongAugment()
    state = torch.random.get_rng_state()
    first = aug(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.random.get_rng_state(), state)
    second = aug(x, generator=torch.Generator().manual_seed(5))
    third = aug(x, generator=torch.Generator().manual_seed(6))
    assert all(torch.equal(f, s) for f, s in zip(first, second))
    assert not torch.allclose(first[0], third[0])


def test_strong_augment_draws_independently_per_image():
    img = torch.rand(1, 3, 28, 28).expand(16, 3, 28, 28).contiguous()
    (out,) = StrongAugment(grayscale_p=0.0)((img,), generator=torch.Generator().manual_seed(0))
    changed = [not torch.allclose(out[i], img[i]) for i in range(16)]
    # p=0.8 jitter, p=0.5 blur: some images are untouched, most are changed, and changed ones differ.
    assert 8 <= sum(changed) < 16
    assert not torch.allclose(out[changed.index(True)], out[len(changed) - 1 - changed[::-1].index(True)])


def test_grayscale_off_keeps_colour_and_on_makes_gray():
    img = torch.rand(32, 3, 28, 28)
    no_gray = StrongAugment(jitter_p=0.0, blur_p=0.0, grayscale_p=0.0)(
        (img,), torch.Generator().manual_seed(0)
    )[0]
    assert torch.equal(no_gray, img)
    all_gray = StrongAugment(jitter_p=0.0, blur_p=0.0, grayscale_p=1.0)(
        (img,), torch.Generator().manual_seed(0)
    )[0]
    assert torch.allclose(all_gray[:, 0], all_gray[:, 1]) and torch.allclose(all_gray[:, 1], all_gray[:, 2])


def test_strong_augment_refuses_a_band_count_it_was_not_set_up_for():
    with pytest.raises(SemisegError, match="B x 3 x H x W"):
        StrongAugment()((torch.rand(1, 4, 14, 14),))


def test_multispectral_strong_augment_scales_all_bands_alike_and_never_greys():
    """13 bands: brightness/contrast only (one factor per image for all bands), no grey conversion; a band
    ratio survives brightness, which hue/saturation jitter would have mixed across bands."""
    img = torch.rand(4, 13, 28, 28) * 0.5 + 0.25
    img[:, 5] = img[:, 4] * 0.5  # band 6 is half of band 5
    aug = StrongAugment(bands=13, jitter=(0.5, 0.0, 0.0, 0.0), jitter_p=1.0, blur_p=0.0, grayscale_p=1.0)
    out = aug((img,), torch.Generator().manual_seed(0))[0]
    assert out.shape == img.shape and not torch.equal(out, img)
    unclipped = (out[:, 4] < 1.0) & (out[:, 4] > 0.0)
    torch.testing.assert_close(out[:, 5][unclipped], out[:, 4][unclipped] * 0.5)
    assert aug.grayscale_p == 0.0


def test_cutmix_boxes_p0_gives_no_box():
    boxes = cutmix_boxes(16, 28, p=0.0, generator=torch.Generator().manual_seed(0))
    assert boxes.shape == (16, 28, 28) and not boxes.any()


def test_cutmix_box_area_aspect_and_placement_follow_the_official_rule():
    size, n = 56, 400
    boxes = cutmix_boxes(n, size, p=0.5, generator=torch.Generator().manual_seed(0))
    has_box = boxes.flatten(1).any(1)
    assert 0.4 < has_box.float().mean() < 0.6
    for m in boxes[has_box]:
        rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        h, w = int(rows.numel()), int(cols.numel())
        # A solid rectangle fully inside the image (masks cannot reach outside; check it is one rectangle).
        assert int(m.sum()) == h * w
        assert rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w
        # w = int(sqrt(A / r)), h = int(sqrt(A * r)) with A in [0.02, 0.4] S^2 and r in [0.3, 1/0.3].
        assert h * w <= 0.4 * size * size + 1e-6
        assert (h + 1) * (w + 1) >= 0.02 * size * size
        assert (h / (w + 1)) <= 1 / 0.3 + 1e-6 and ((h + 1) / max(w, 1)) >= 0.3 - 1e-6


def test_cutmix_boxes_are_reproducible_and_respect_rectangular_sizes():
    b1 = cutmix_boxes(8, (28, 42), p=1.0, generator=torch.Generator().manual_seed(3))
    b2 = cutmix_boxes(8, (28, 42), p=1.0, generator=torch.Generator().manual_seed(3))
    assert b1.shape == (8, 28, 42) and torch.equal(b1, b2)


def test_mix_with_reversed_uses_the_same_box_and_reversed_partner_for_all_maps():
    box = torch.zeros(3, 2, 2, dtype=torch.bool)
    box[0, 0, 0] = True
    box[2, 1, :] = True
    plabel = torch.tensor([[[0, 0], [0, 0]], [[1, 1], [1, 1]], [[2, 2], [2, 2]]])
    conf = plabel.float() / 10
    ignore = torch.tensor([[[0, 0], [0, 0]], [[0, 0], [0, 0]], [[255, 0], [255, 255]]], dtype=torch.uint8)
    img = plabel[:, None].expand(3, 2, 2, 2).float()
    m_label, m_conf, m_ignore, m_img = mix_with_reversed(box, plabel, conf, ignore, img)
    # Sample 0 takes pixel (0,0) from sample 2; sample 2 takes row 1 from sample 0; sample 1 unchanged.
    assert m_label.tolist() == [[[2, 0], [0, 0]], [[1, 1], [1, 1]], [[2, 2], [0, 0]]]
    assert torch.allclose(m_conf, m_label.float() / 10)
    assert m_ignore.tolist() == [[[255, 0], [0, 0]], [[0, 0], [0, 0]], [[255, 0], [0, 0]]]
    assert torch.equal(m_img, m_label[:, None].expand(3, 2, 2, 2).float())


def test_cutmix_refuses_a_box_that_does_not_fit_the_batch():
    box = torch.ones(2, 2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="does not fit"):
        mix_with_reversed(box, torch.zeros(3, 3, 2, 2))


def test_change_detection_views_without_grayscale_stay_coloured():
    a, b = _weak_pair(b=8)
    views = StrongViews(**NORM, grayscale_p=0.0, cutmix_p=0.0)
    assert views.augment.grayscale_p == 0.0
    for s in views((a, b), generator=torch.Generator().manual_seed(2)).images:
        raw = s * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        spread = (raw.max(1).values - raw.min(1).values).flatten(1).max(1).values
        assert (spread > 1e-3).all()  # no image collapsed to gray
    assert math.isclose(views.cutmix_p, 0.0)
