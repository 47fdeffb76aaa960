"""Image decoding: EXIF orientation, odd modes -> RGB, and precise errors."""
import numpy as np
import pytest
from PIL import Image

from retinakit.data import BadImageError, read_image
from retinakit.data.image_io import EXIF_ORIENTATION_TAG, image_size


def _rgb(h=6, w=10, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_rgb_png_roundtrip_and_bgr(tmp_path):
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = read_image(str(tmp_path / "a.png"))
    assert out.dtype == np.uint8 and out.flags.writeable
    np.testing.assert_array_equal(out, arr)
    np.testing.assert_array_equal(read_image(str(tmp_path / "a.png"), "BGR"), arr[:, :, ::-1])


@pytest.mark.parametrize("orientation,op", [(3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)), (2, lambda a: a[:, ::-1])])
def test_exif_orientation(tmp_path, orientation, op):
    """Pixels are rotated as PIL's reference ``ImageOps.exif_transpose`` does (checked by hand for 6 = 90° CW)."""
    arr = _rgb()
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = orientation
    p = str(tmp_path / "o.png")
    Image.fromarray(arr).save(p, exif=exif)
    out = read_image(p)
    np.testing.assert_array_equal(out, op(arr))
    assert image_size(p) == out.shape[:2]


def test_modes_converted_to_rgb(tmp_path):
    gray = np.arange(60, dtype=np.uint8).reshape(6, 10) * 4
    Image.fromarray(gray, "L").save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_image(str(tmp_path / "l.png")), np.repeat(gray[:, :, None], 3, 2))

    rgba = np.dstack([_rgb(), np.full((6, 10), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(str(tmp_path / "rgba.png")), rgba[:, :, :3])

    pal = Image.fromarray(_rgb()).quantize(8)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(str(tmp_path / "p.png")), np.asarray(pal.convert("RGB")))

    g16 = (np.arange(60, dtype=np.uint16).reshape(6, 10) * 1000).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    out = read_image(str(tmp_path / "g16.png"))
    expected = np.rint(g16 / 65535.0 * 255).astype(np.uint8)
    np.testing.assert_array_equal(out[:, :, 0], expected)  # scaled, not clipped at 255
    assert out.shape == (6, 10, 3)


def test_missing_truncated_corrupt(tmp_path):
    with pytest.raises(BadImageError, match=r"nope.png \(image id 3\) does not exist"):
        read_image(str(tmp_path / "nope.png"), context="image id 3")
    (tmp_path / "junk.jpg").write_bytes(b"\x00" * 100)
    with pytest.raises(BadImageError, match="cannot be read as an image"):
        read_image(str(tmp_path / "junk.jpg"))
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "t.jpg", quality=90)
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match="truncated or corrupt"):
        read_image(str(tmp_path / "t.jpg"))
