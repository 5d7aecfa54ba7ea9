"""Canvas drawings (Fabric.js JSON from streamlit-drawable-canvas) become image-pixel prompts."""

import numpy as np
import pytest

from samlib.app.canvas import (
    BACKGROUND_COLOR,
    FOREGROUND_COLOR,
    merge_prompts,
    prompts_from_canvas,
    typed_box,
)
from samlib.coords import fit_width
from samlib.errors import PromptError
from samlib.prompts.objects import PromptSet


def point_object(x, y, color, radius=4, stroke=2):
    """A point exactly as the canvas's point tool draws it at a click on (x, y)."""
    return {
        "type": "Circle",
        "left": x - (radius + stroke / 2),
        "top": y,
        "originX": "left",
        "originY": "center",
        "radius": radius,
        "width": 2 * radius,
        "height": 2 * radius,
        "strokeWidth": stroke,
        "stroke": color,
        "scaleX": 1,
        "scaleY": 1,
    }


def rect_object(x0, y0, x1, y1, stroke=2):
    """A box as the canvas's rect tool draws it when dragged from (x0, y0) to (x1, y1)."""
    return {
        "type": "Rect",
        "left": min(x0, x1),
        "top": min(y0, y1),
        "originX": "left",
        "originY": "top",
        "width": abs(x1 - x0),
        "height": abs(y1 - y0),
        "strokeWidth": stroke,
        "strokeUniform": True,
        "scaleX": 1,
        "scaleY": 1,
    }


@pytest.mark.parametrize("scale", [0.37, 0.5, 1.0, 2.0])
def test_clicks_map_to_image_pixels_at_any_display_scale(scale):
    image_size = (640, 480)
    canvas_size = (round(640 * scale), round(480 * scale))
    sx, sy = canvas_size[0] / 640, canvas_size[1] / 480
    drawing = {
        "objects": [
            point_object(100 * sx, 50 * sy, FOREGROUND_COLOR),
            point_object(300 * sx, 400 * sy, BACKGROUND_COLOR, radius=7, stroke=3),
            rect_object(200 * sx, 300 * sy, 20 * sx, 30 * sy),  # dragged up-left
        ]
    }
    p = prompts_from_canvas(drawing, canvas_size, image_size)
    np.testing.assert_allclose(p.points, [[100, 50], [300, 400]], atol=1e-9)
    assert p.labels.tolist() == [1, 0]
    np.testing.assert_allclose(p.boxes, [[20, 30, 200, 300]], atol=1e-9)


def test_scaled_and_centred_objects_use_their_true_centre():
    # an edited point: scaled x2 around a centre origin stays at its centre
    obj = point_object(40, 30, FOREGROUND_COLOR)
    obj.update(originX="center", left=40, top=30, scaleX=2, scaleY=2)
    p = prompts_from_canvas({"objects": [obj]}, (100, 100), (100, 100))
    np.testing.assert_allclose(p.points, [[40, 30]])
    rect = rect_object(10, 10, 30, 20)
    rect.update(scaleX=2, scaleY=3)
    p = prompts_from_canvas({"objects": [rect]}, (100, 100), (100, 100))
    np.testing.assert_allclose(p.boxes, [[10, 10, 50, 40]])


def test_empty_and_foreign_drawings_give_no_prompts():
    assert prompts_from_canvas(None, (10, 10), (10, 10)).empty
    other = {"objects": [{"type": "path", "left": 1, "top": 1}, rect_object(5, 5, 5.2, 9)]}
    p = prompts_from_canvas(other, (10, 10), (10, 10))
    assert p.empty  # free-hand paths are ignored and a zero-width box is not a prompt
    assert p.points.shape == (0, 2) and p.boxes.shape == (0, 4)


def test_points_outside_the_canvas_are_clipped_to_the_image():
    p = prompts_from_canvas(
        {"objects": [point_object(-20, 500, FOREGROUND_COLOR)]}, (200, 100), (400, 200)
    )
    np.testing.assert_allclose(p.points, [[0, 200]])


def test_merge_and_rows():
    a = PromptSet(np.array([[1.0, 2.0]]), np.array([1]), np.zeros((0, 4)))
    b = PromptSet(np.array([[3.0, 4.0]]), np.array([0]), np.array([[0.0, 0, 5, 5]]))
    m = merge_prompts(a, b)
    assert m.labels.tolist() == [1, 0] and m.boxes.shape == (1, 4)
    assert [r["prompt"] for r in m.as_rows()] == ["foreground point", "background point", "box"]


@pytest.mark.parametrize(
    ("size", "width", "expected"), [((512, 512), 1000, (1000, 1000)), ((550, 660), 450, (450, 540))]
)
def test_canvas_fits_any_width_and_clicks_still_map_to_pixels(size, width, expected):
    canvas = fit_width(size, width)
    assert canvas == expected
    # the centre of image pixel (x=100, y=200) as the canvas shows it maps back exactly
    cx, cy = 100.5 * canvas[0] / size[0], 200.5 * canvas[1] / size[1]
    p = prompts_from_canvas({"objects": [point_object(cx, cy, FOREGROUND_COLOR)]}, canvas, size)
    np.testing.assert_allclose(p.points, [[100.5, 200.5]])


def test_typed_box_reads_four_numbers_and_refuses_anything_else():
    assert typed_box("10, 20.5; 30,40").boxes.tolist() == [[10.0, 20.5, 30.0, 40.0]]
    for text in ("1, 2, 3", "1, 2, 3, 4, 5", "a, b, c, d", "", "nan, 1, 2, 3", "1, 2, inf, 4"):
        with pytest.raises(PromptError, match="four numbers") as info:
            typed_box(text)
        assert repr(text) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(PromptError, match="x0 <= x1"):
        typed_box("30, 20, 10, 40")
