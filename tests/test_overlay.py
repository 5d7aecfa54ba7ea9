"""Overlays: colours land on the masks only, outlines on edges, boxes and markers in place."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from samlib.errors import ParameterError
from samlib.outputs import overlay
from samlib.records.rle import encode_coco

SHAPE = (60, 80)


def _mask(r, c, rad):
    m = np.zeros(SHAPE, bool)
    m[disk((r, c), rad, shape=SHAPE)] = True
    return m


@pytest.fixture
def rgb():
    return np.full((*SHAPE, 3), 40, np.uint8)


def test_color_masks_changes_only_mask_pixels(rgb):
    masks = [_mask(20, 20, 8), _mask(40, 60, 10)]
    out = overlay.color_masks(rgb, masks, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    changed = np.any(out != rgb, axis=2)
    np.testing.assert_array_equal(changed, masks[0] | masks[1])
    assert not np.array_equal(out[20, 20], out[40, 60])  # distinct colours
    assert np.all(rgb == 40)  # input untouched
    full = overlay.color_masks(rgb, masks, alpha=1.0, colors=np.array([[255, 0, 0], [0, 0, 255]]))
    assert full[20, 20].tolist() == [255, 0, 0] and full[40, 60].tolist() == [0, 0, 255]
    assert np.array_equal(overlay.color_masks(rgb, []), rgb)


def test_records_with_rle_work(rgb):
    m = _mask(30, 40, 10)
    records = [{"segmentation": encode_coco(m), "area": int(m.sum()), "bbox": [31, 21, 18, 18]}]
    out = overlay.render(rgb, records, masks=True, outlines=False, boxes=False)
    np.testing.assert_array_equal(np.any(out != rgb, axis=2), m)


def test_outlines_on_edge_only(rgb):
    m = _mask(30, 40, 10)
    out = overlay.draw_outlines(rgb, [m], color=(255, 0, 0))
    edge = np.all(out == (255, 0, 0), axis=2)
    assert edge.any() and not (edge & ~m).any()  # inner boundary
    assert not edge[30, 40]  # centre untouched
    assert edge[30, 40 - 10 + 1] or edge[30, 40 - 10]


def test_boxes_xyxy_and_xywh(rgb):
    out = overlay.draw_boxes(rgb, [[10, 5, 30, 25]], color=(0, 255, 0))
    green = np.all(out == (0, 255, 0), axis=2)
    assert green[5, 10:31].all() and green[25, 10:31].all()  # top, bottom rows
    assert green[5:26, 10].all() and green[5:26, 30].all()  # left, right columns
    assert not green[15, 20] and green.sum() == 2 * 21 + 2 * 19
    same = overlay.draw_boxes(rgb, [[10, 5, 20, 20]], xywh=True, color=(0, 255, 0))
    np.testing.assert_array_equal(same, out)
    outside = overlay.draw_boxes(rgb, [[500, 500, 600, 600]])
    np.testing.assert_array_equal(outside, rgb)


def test_prompt_markers_at_points(rgb):
    out = overlay.draw_prompts(
        rgb, np.array([[20.5, 10.5], [60.0, 45.0]]), np.array([1, 0]), np.array([[5, 5, 70, 50]])
    )
    assert out[10, 20].tolist() == list(overlay.FOREGROUND)  # (x, y) -> [row, col]
    assert out[45, 60].tolist() == list(overlay.BACKGROUND)
    assert out[5, 30].tolist() == list(overlay.BOX_COLOR)
    with pytest.raises(ParameterError):
        overlay.draw_points(rgb, [[1, 2]], [1, 0])


def test_render_grid_points_and_boxes(rgb):
    masks = [_mask(20, 20, 8)]
    out = overlay.render(
        rgb, masks, masks=False, outlines=False, boxes=True, points=np.array([[70.0, 50.0]])
    )
    assert out[50, 70].tolist() == list(overlay.GRID_COLOR)
    assert out[13, 20].tolist() == list(overlay.BOX_COLOR)  # top edge of the disk's box


def test_instance_crops(rgb):
    rgb = rgb.copy()
    rgb[..., 0] = 200
    masks = [_mask(20, 20, 8), _mask(40, 72, 10), np.zeros(SHAPE, bool)]
    crops = overlay.instance_crops(rgb, masks, pad=2, outline=False)
    assert crops[0].shape == (15 + 4, 15 + 4, 3)
    assert crops[1].shape == (19 + 4, 17 + 2, 3)  # clipped at the right border (col 79)
    assert crops[0][9, 9, 0] == 200  # inside the mask: full brightness
    assert crops[0][0, 0, 0] == round(200 * 0.35)  # outside: dimmed
    assert crops[2].shape == (1, 1, 3)


def test_bad_inputs_refused(rgb):
    with pytest.raises(ParameterError, match="uint8"):
        overlay.color_masks(rgb.astype(np.float32), [])
    with pytest.raises(ParameterError, match="image"):
        overlay.color_masks(rgb, [np.zeros((5, 5), bool)])
    with pytest.raises(ParameterError):
        overlay.color_masks(rgb, [], alpha=2)


def test_palette_distinct():
    p = overlay.palette(50)
    assert p.shape == (50, 3) and p.dtype == np.uint8
    assert len({tuple(c) for c in p}) == 50
