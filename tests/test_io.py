"""Reading images of every supported format, dtype and layout; refusing bad input."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
import tifffile
from conftest import make_disks
from PIL import Image
from skimage.draw import disk

from samlib.errors import (
    CorruptImageError,
    ImageError,
    ImageTooLargeError,
    ImageWarning,
    ParameterError,
    UnsupportedImageError,
)
from samlib.image import tiff
from samlib.image.display import to_rgb8
from samlib.image.io import read_image
from samlib.image.microscopy import as_image, guess_axes, image_hash

DTYPES = [np.uint8, np.uint16, np.int32, np.float32]


def _stack(n_planes=3, n_channels=2, shape=(40, 56), dtype=np.uint16):
    """(planes, Y, X, C) with a distinct disk per plane and a distinct value per channel."""
    out = np.zeros((n_planes, *shape, n_channels), dtype=np.float64)
    for p in range(n_planes):
        rr, cc = disk((10 + 5 * p, 15 + 8 * p), 6, shape=shape)
        for c in range(n_channels):
            out[p, rr, cc, c] = 10 * (p + 1) + c + 1
    return out.astype(dtype)


def _tiff_bytes(array, **kwargs) -> bytes:
    buf = io.BytesIO()
    kwargs.setdefault("photometric", "minisblack")
    tifffile.imwrite(buf, array, **kwargs)
    return buf.getvalue()


def _pil_bytes(array, fmt) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("axes", "perm"),
    [
        ("ZCYX", (0, 3, 1, 2)),
        ("CZYX", (3, 0, 1, 2)),
        ("ZYXC", (0, 1, 2, 3)),
        ("TZCYX", None),
    ],
)
def test_tiff_imagej_layouts_round_trip(dtype, axes, perm):
    canon = _stack(dtype=dtype)
    if perm is None:  # 2 time points x 3 z-slices: planes flatten in file order (T major)
        canon = np.concatenate([canon, canon + 1])
        stored = canon.reshape(2, 3, *canon.shape[1:]).transpose(0, 1, 4, 2, 3)
    else:
        stored = canon.transpose(perm)
    if axes in ("ZCYX", "TZCYX") and dtype != np.int32:  # what ImageJ can hold
        raw = _tiff_bytes(stored, imagej=True, metadata={"axes": axes})
    else:
        raw = _tiff_bytes(stored, metadata={"axes": axes})
    img = read_image(raw, name="s.tif")
    assert img.dtype == np.dtype(dtype)
    assert img.shape == canon.shape
    np.testing.assert_array_equal(img.data, canon)
    assert img.name == "s.tif"


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((40, 56), "YX"),
        ((40, 56, 3), "YXC"),
        ((40, 56, 5), "YXC"),
        ((2, 40, 56), "CYX"),
        ((12, 40, 56), "QYX"),
        ((7, 2, 40, 56), "QCYX"),
        ((3, 12, 40, 56), "CQYX"),
        ((4, 40, 56, 3), "QYXC"),
    ],
)
def test_guess_axes(shape, expected):
    assert guess_axes(shape) == expected


def test_tiff_without_metadata_uses_guess_and_override():
    stack = _stack(n_planes=3, n_channels=1, dtype=np.uint16)[..., 0]  # (3, Y, X)
    raw = _tiff_bytes(stack)
    guessed = read_image(raw)
    assert guessed.n_channels == 3 and guessed.n_planes == 1  # small first axis = channels
    as_z = read_image(raw, axes="ZYX")
    assert as_z.n_planes == 3 and as_z.n_channels == 1
    np.testing.assert_array_equal(as_z.data[..., 0], stack)
    with pytest.raises(ParameterError, match="ZZ"):
        read_image(raw, axes="ZZ")


def test_float_nan_and_max_projection():
    stack = _stack(n_planes=3, n_channels=1, dtype=np.float32)
    stack[0, 0, 0, 0] = np.nan
    stack[:, 1, 1, 0] = np.nan  # NaN in every plane stays NaN
    img = read_image(_tiff_bytes(stack[..., 0], metadata={"axes": "ZYX"}))
    mip = img.plane("max")
    assert mip.shape == (40, 56, 1)
    assert np.isnan(mip[1, 1, 0]) and not np.isnan(mip[0, 0, 0])
    np.testing.assert_array_equal(
        np.nan_to_num(mip[..., 0]), np.nan_to_num(stack).max(axis=0)[..., 0]
    )
    rgb = to_rgb8(img, plane="max", percentiles=(0, 100))
    assert rgb.dtype == np.uint8 and rgb.shape == (40, 56, 3)
    assert rgb[1, 1].tolist() == [0, 0, 0]
    assert rgb.max() == 255


def test_rgb_tiff_and_pixel_size():
    rgb = (np.arange(40 * 56 * 3) % 251).astype(np.uint8).reshape(40, 56, 3)
    raw = _tiff_bytes(
        rgb,
        imagej=True,
        photometric="rgb",
        resolution=(1 / 0.325, 1 / 0.325),
        metadata={"unit": "um"},
    )
    img = read_image(raw)
    assert img.shape == (1, 40, 56, 3)
    assert img.pixel_size_um == pytest.approx(0.325)
    np.testing.assert_array_equal(img.plane(0), rgb)
    assert read_image(_tiff_bytes(rgb, photometric="rgb")).pixel_size_um is None


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "JPEG"])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_pillow_formats(fmt, mode, tmp_path):
    base, _ = make_disks()
    array = base if mode == "L" else np.stack([base, base // 2, 255 - base], axis=-1)
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(_pil_bytes(array, fmt))
    img = read_image(path)
    assert img.name == path.name
    assert img.n_channels == (1 if mode == "L" else 3)
    assert img.dtype == np.uint8
    got = img.plane(0)[..., 0] if mode == "L" else img.plane(0)
    if fmt == "JPEG":  # lossy: close, not equal
        assert np.abs(got.astype(int) - array.astype(int)).mean() < 6
    else:
        np.testing.assert_array_equal(got, array)


def test_png_16bit_and_alpha_dropped():
    array = (np.arange(40 * 56) * 29).astype(np.uint16).reshape(40, 56)
    img = read_image(_pil_bytes(array, "PNG"))
    assert img.dtype == np.uint16
    np.testing.assert_array_equal(img.data[0, ..., 0], array)
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0] = 200
    img = read_image(_pil_bytes(rgba, "PNG"))
    assert img.n_channels == 3 and img.data[..., 0].min() == 200


def test_file_object_upload_is_read_from_start():
    raw = _tiff_bytes(np.ones((8, 9), np.uint16))
    f = io.BytesIO(raw)
    f.name = "upload.tif"
    f.read(3)  # a previous reader moved the position
    img = read_image(f)
    assert img.name == "upload.tif" and img.shape == (1, 8, 9, 1)


def test_refuses_empty_corrupt_and_unsupported(tmp_path):
    with pytest.raises(CorruptImageError, match="empty"):
        read_image(b"")
    with pytest.raises(UnsupportedImageError, match="GIF8"):
        read_image(b"GIF89a\x01\x00\x01\x00")
    png = _pil_bytes(np.full((64, 64), 7, np.uint8), "PNG")
    with pytest.raises(CorruptImageError):
        read_image(png[: len(png) // 2])
    tif = _tiff_bytes(np.ones((64, 64), np.uint16), compression="zlib")
    with pytest.raises(CorruptImageError):
        read_image(tif[: len(tif) // 2])
    tif = _tiff_bytes(np.ones((3, 64, 64), np.uint16))
    with pytest.raises(CorruptImageError):
        read_image(tif[:200])
    with pytest.raises(ImageError, match="nope.tif"):
        read_image(tmp_path / "nope.tif")
    with pytest.raises(ParameterError):
        read_image(12345)


def test_refuses_too_large_before_decoding():
    raw = _tiff_bytes(np.zeros((3, 100, 100), np.uint8), metadata={"axes": "ZYX"})
    with pytest.raises(ImageTooLargeError, match="30,000"):
        read_image(raw, max_pixels=29_999)
    assert read_image(raw, max_pixels=30_000).n_planes == 3
    png = _pil_bytes(np.zeros((100, 100), np.uint8), "PNG")
    with pytest.raises(ImageTooLargeError):
        read_image(png, max_pixels=9_999)
    with pytest.raises(ParameterError):
        read_image(png, max_pixels=0)


class _CountingFile(io.BytesIO):
    """An in-memory binary file that counts the bytes read from it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        out = super().read(size)
        self.bytes_read += len(out)
        return out

    def readinto(self, buffer) -> int:
        n = super().readinto(buffer)
        self.bytes_read += n
        return n


def _one_pixel_pages(n: int) -> bytes:
    """A TIFF of ``n`` one-pixel pages, one IFD each, read as one series of ``n`` planes."""
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as w:
        for i in range(n):
            w.write(np.full((1, 1), i % 251, np.uint8), photometric="minisblack", metadata=None)
    return buf.getvalue()


def test_tiff_pages_beyond_the_cap_refused_before_reading_them(monkeypatch):
    monkeypatch.setattr(tiff, "MAX_TIFF_PAGES", 1000)
    at_cap = read_image(_one_pixel_pages(1000))
    assert at_cap.n_planes == 1000 and at_cap.data[250, 0, 0, 0] == 250 % 251
    raw = _one_pixel_pages(5000)
    stream = _CountingFile(raw)
    with pytest.raises(ImageTooLargeError, match=r"stack\.tif: .*more than 1,000 pages") as info:
        read_image(stream, name="stack.tif")
    assert "\n" not in str(info.value)
    # Only the chain of page headers up to the cap was walked: a fraction of the file.
    assert stream.bytes_read < len(raw) / 4


def test_tiff_with_two_series_reads_the_first_warns_and_reads_another_on_request():
    first = _stack(n_planes=2, n_channels=1)[..., 0]  # (2, 40, 56) uint16
    second = np.arange(12 * 20, dtype=np.uint16).reshape(12, 20)
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as w:
        w.write(first, photometric="minisblack", metadata={"axes": "ZYX"})
        w.write(second, photometric="minisblack")
    raw = buf.getvalue()
    with tifffile.TiffFile(io.BytesIO(raw)) as tif:
        assert len(tif.series) == 2
    with pytest.warns(ImageWarning, match=r"two\.tif: .* 2 image series.*other 1.*series=") as info:
        img = read_image(raw, name="two.tif")
    assert len(info) == 1 and "\n" not in str(info[0].message)
    np.testing.assert_array_equal(img.data[..., 0], first)
    assert img.metadata["n_series"] == 2 and img.metadata["series"] == 0
    other = read_image(raw, series=1)  # asked for: no warning (warnings are errors here)
    np.testing.assert_array_equal(other.data[0, ..., 0], second)
    assert other.metadata["series"] == 1
    with pytest.raises(ParameterError, match="series 2 does not exist, the TIFF holds 2"):
        read_image(raw, series=2)
    with pytest.raises(ParameterError, match="series must be an integer"):
        read_image(raw, series=-1)
    with pytest.raises(ParameterError, match="series can only be given for TIFF"):
        read_image(_pil_bytes(np.zeros((8, 8), np.uint8), "PNG"), series=0)


def test_zero_size_axis_refused():
    with pytest.raises(CorruptImageError, match="zero-size"):
        as_image(np.zeros((0, 5), np.uint8))
    with pytest.raises(UnsupportedImageError):
        as_image(np.zeros((5,), np.uint8))
    with pytest.raises(UnsupportedImageError, match="complex"):
        as_image(np.zeros((4, 5), np.complex64))


def test_image_hash_depends_on_values_shape_and_dtype():
    a = np.arange(12, dtype=np.uint16).reshape(3, 4)
    assert image_hash(a) == image_hash(a.copy())
    assert image_hash(a) != image_hash(a.reshape(4, 3))
    assert image_hash(a) != image_hash(a.astype(np.int16))
    b = a.copy()
    b[0, 0] = 1
    assert image_hash(a) != image_hash(b)
    assert image_hash(a.T) == image_hash(np.ascontiguousarray(a.T))
    assert as_image(a).hash == image_hash(as_image(a).data)


def test_plane_and_channel_errors():
    img = as_image(_stack(), "ZYXC")
    with pytest.raises(ParameterError, match="plane 3"):
        img.plane(3)
    with pytest.raises(ParameterError):
        img.plane("min")
    with pytest.raises(ParameterError, match="channel 2"):
        img.channel(2)
    np.testing.assert_array_equal(img.plane(-1), img.data[2])


def test_png_16bit_rgb_keeps_16_bits():
    rgb = (np.arange(10 * 12 * 3).reshape(10, 12, 3) * 181).astype(np.uint16)
    ok, buf = cv2.imencode(".png", rgb[..., ::-1])  # OpenCV writes BGR
    assert ok
    img = read_image(buf.tobytes())
    assert img.dtype == np.uint16 and img.shape == (1, 10, 12, 3)
    np.testing.assert_array_equal(img.plane(0), rgb)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("axes", "stored_shape", "canonical"),
    [
        ("YX", (40, 56), (1, 40, 56, 1)),
        ("YXC", (40, 56, 3), (1, 40, 56, 3)),
        ("CYX", (2, 40, 56), (1, 40, 56, 2)),
        ("ZYX", (6, 40, 56), (6, 40, 56, 1)),
        ("ZCYX", (4, 2, 40, 56), (4, 40, 56, 2)),
        ("TCZYX", (2, 3, 2, 40, 56), (4, 40, 56, 3)),
    ],
)
def test_layouts_and_dtypes_round_trip(dtype, axes, stored_shape, canonical):
    rng = np.random.default_rng(0)
    stored = (rng.random(stored_shape) * 200).astype(dtype)
    if dtype == np.float32:
        stored.flat[::97] = np.nan
    img = read_image(_tiff_bytes(stored, metadata={"axes": axes}))
    assert img.axes == axes and img.shape == canonical and img.dtype == np.dtype(dtype)
    # every stored value is in the canonical array, at the place its axes say
    order = [i for i, a in enumerate(axes) if a not in "CYX"]
    order += [axes.index("Y"), axes.index("X")] + [i for i, a in enumerate(axes) if a == "C"]
    expected = stored.transpose(order).reshape(canonical)
    np.testing.assert_array_equal(img.data, expected)
    rgb = to_rgb8(img, plane="max")
    assert rgb.shape == (40, 56, 3) and rgb.dtype == np.uint8 and rgb.max() == 255


def test_png_decompression_bomb_refused_before_decoding():
    png = bytearray(_pil_bytes(np.zeros((8, 8), np.uint8), "PNG"))
    # Rewrite the IHDR to claim 30000 x 30000 pixels (900 Mpx), with a valid CRC.
    png[16:24] = struct.pack(">II", 30_000, 30_000)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    with pytest.raises(ImageTooLargeError, match="900,?000,?000 pixels"):
        read_image(bytes(png))


def test_pixel_size_from_ome_and_centimetre_resolution():
    data = np.zeros((2, 16, 20), np.uint16)
    ome = _tiff_bytes(
        data, ome=True, metadata={"axes": "CYX", "PhysicalSizeX": 0.2, "PhysicalSizeXUnit": "µm"}
    )
    img = read_image(ome)
    assert img.pixel_size_um == pytest.approx(0.2) and img.n_channels == 2
    cm = _tiff_bytes(data[0], resolution=(20_000, 20_000), resolutionunit="CENTIMETER")
    assert read_image(cm).pixel_size_um == pytest.approx(0.5)  # 20,000 px/cm = 0.5 µm/px
    inch = _tiff_bytes(data[0], resolution=(72, 72), resolutionunit="INCH")
    assert read_image(inch).pixel_size_um is None  # screen dpi, not a microscope calibration
