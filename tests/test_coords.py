import numpy as np
import pytest

from samlib import coords


@pytest.mark.parametrize("box", [[0, 0, 1, 1], [3.5, 2, 10, 7.25], [100, 40, 0, 0]])
def test_xywh_xyxy_round_trip(box):
    xyxy = coords.xywh_to_xyxy(box)
    assert xyxy[2] == box[0] + box[2] and xyxy[3] == box[1] + box[3]
    assert coords.xyxy_to_xywh(xyxy) == pytest.approx(box)


def test_xy_rowcol_flip_indexes_the_right_pixel():
    img = np.zeros((5, 8), dtype=np.uint8)
    img[3, 6] = 1  # row 3, column 6
    row, col = coords.xy_to_rowcol(6.7, 3.2)
    assert img[row, col] == 1
    assert coords.xy_to_rowcol(*coords.rowcol_to_xy(3, 6)) == (3, 6)


@pytest.mark.parametrize("scale", [0.25, 0.5, 1.0, 1.7])
def test_canvas_to_image_at_any_display_scale(scale):
    image_size = (640, 480)
    canvas_size = (round(640 * scale), round(480 * scale))
    # the canvas point that shows image pixel (x=100, y=50)
    cx, cy = 100 * canvas_size[0] / 640, 50 * canvas_size[1] / 480
    x, y = coords.canvas_to_image(cx, cy, canvas_size, image_size)
    assert (x, y) == pytest.approx((100, 50))


def test_canvas_point_is_clipped_to_image():
    assert coords.canvas_to_image(-5, 900, (320, 240), (640, 480)) == (0.0, 480.0)


def test_canvas_box_normalises_dragged_up_left():
    box = coords.canvas_box_to_image(50, 40, -30, -20, (320, 240), (640, 480))
    assert box == pytest.approx([40, 40, 100, 80])


def test_canvas_rejects_zero_sizes():
    with pytest.raises(ValueError, match="positive"):
        coords.canvas_to_image(1, 1, (0, 10), (10, 10))


@pytest.mark.parametrize(
    ("size", "max_width", "expected"),
    [((1000, 500), 700, (700, 350)), ((300, 200), 700, (300, 200))],
)
def test_display_size_never_upscales(size, max_width, expected):
    assert coords.display_size(size, max_width) == expected
