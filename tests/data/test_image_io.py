"""Image decoding: EXIF orientation, odd modes -> RGB, and precise errors."""
import numpy as np
import pytest
from PIL import Image

from retinakit.data import BadImageError, read_image
from retinakit.data.image_io import EXIF_ORIENTATION_TAG, image_size, size_mismatch


def _rgb(h=6, w=10, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_rgb_png_roundtrip_and_bgr(tmp_path):
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = read_image(str(tmp_path / "a.png"))
    assert out.dtype == np.uint8 and out.flags.writeable
    np.testing.assert_array_equal(out, arr)
    np.testing.assert_array_equal(read_image(str(tmp_path / "a.png"), "BGR"), arr[:, :, ::-1])


@pytest.mark.parametrize("orientation,op", [
    (3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)), (2, lambda a: a[:, ::-1]),
])
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


def _cut(path, n_bytes):
    data = path.read_bytes()
    path.write_bytes(data[:-n_bytes])


def test_verify_image_finds_truncated_files_without_decoding(tmp_path):
    """verify_image walks PNG chunks (CRC, IEND) and JPEG markers (to EOI): a file cut
    anywhere fails, even one PIL still decodes (cut just before IEND/EOI: DALI rejects it)."""
    from retinakit.data.image_io import verify_image

    arr = _rgb(48, 64)
    for name in ("a.png", "a.jpg"):
        Image.fromarray(arr).save(tmp_path / name)
        assert verify_image(str(tmp_path / name)) == (48, 64, "PNG" if name.endswith("png") else "JPEG")
    for name, cut in [("a.png", 12), ("a.png", 400), ("a.jpg", 2), ("a.jpg", 300)]:
        (tmp_path / "c").mkdir(exist_ok=True)
        path = tmp_path / "c" / name
        path.write_bytes((tmp_path / name).read_bytes())
        _cut(path, cut)
        with pytest.raises(BadImageError, match=r"image id 5\) is truncated or corrupt \(cut off") as e:
            verify_image(str(path), "image id 5")
        assert e.value.kind == "truncated or corrupt image file"
    png = bytearray((tmp_path / "a.png").read_bytes())
    png[60] ^= 0xFF  # inside IDAT: its CRC no longer matches
    (tmp_path / "crc.png").write_bytes(bytes(png))
    with pytest.raises(BadImageError, match="CRC mismatch in the IDAT chunk"):
        verify_image(str(tmp_path / "crc.png"))
    with pytest.raises(BadImageError, match="does not exist") as e:
        verify_image(str(tmp_path / "nope.png"))
    assert e.value.kind == "missing image file"


def test_verify_image_jpeg_segments_and_trailing_bytes(tmp_path):
    """An end-of-image marker inside a header segment (e.g. an EXIF thumbnail) does not make
    a cut file look complete; bytes after EOI are allowed (decoders ignore them)."""
    from retinakit.data.image_io import verify_image

    Image.fromarray(_rgb(40, 40)).save(tmp_path / "a.jpg", quality=90)
    data = (tmp_path / "a.jpg").read_bytes()
    payload = b"thumb\xff\xd8\x00\xff\xd9"
    app9 = b"\xff\xe9" + (len(payload) + 2).to_bytes(2, "big") + payload
    with_segment = data[:2] + app9 + data[2:]
    (tmp_path / "seg.jpg").write_bytes(with_segment)
    assert verify_image(str(tmp_path / "seg.jpg"))[:2] == (40, 40)
    (tmp_path / "seg_cut.jpg").write_bytes(with_segment[: len(with_segment) - 100])
    with pytest.raises(BadImageError, match="end-of-image marker"):
        verify_image(str(tmp_path / "seg_cut.jpg"))
    (tmp_path / "tail.jpg").write_bytes(data + b"\x00trailing data")
    assert verify_image(str(tmp_path / "tail.jpg"))[:2] == (40, 40)


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_verify_image_exif_orientation(tmp_path, ext):
    from retinakit.data.image_io import verify_image

    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = 6
    p = str(tmp_path / f"o.{ext}")
    Image.fromarray(_rgb(6, 10)).save(p, exif=exif)
    assert verify_image(p)[:2] == image_size(p) == read_image(p).shape[:2] == (10, 6)


def test_verify_image_other_formats_are_decoded(tmp_path):
    from retinakit.data.image_io import verify_image

    Image.fromarray(_rgb(20, 30)).save(tmp_path / "a.bmp")
    assert verify_image(str(tmp_path / "a.bmp")) == (20, 30, "BMP")
    _cut(tmp_path / "a.bmp", 100)
    with pytest.raises(BadImageError, match="truncated or corrupt"):
        verify_image(str(tmp_path / "a.bmp"))


def test_size_mismatch_message_names_file_id_and_both_sizes():
    """One wording for every size check (COCO loading, DALI pre-check, loaders)."""
    assert size_mismatch("a.png", "image id 3", (20, 40), (20, 40)) is None
    assert size_mismatch("a.png", "image id 3", (20, 40), (None, None)) is None  # nothing declared
    msg = size_mismatch("a.png", "image id 3", (20, 40), (20, 41))
    assert msg == (
        "Image a.png (image id 3) is 40x20 (width x height) on disk but the dataset says 41x20. "
        "Fix 'width'/'height' in the JSON (or remove them to read them from the file)."
    )
    assert "is 40x20 (width x height) when decoded" in size_mismatch("a.png", "", (20, 40), (21, 40), seen="when decoded")


def test_image_size_reads_headers_without_decoding(tmp_path, monkeypatch):
    """PNG (orientation in an eXIf chunk) and JPEG sizes come without decoding any pixels."""
    from PIL import ImageFile

    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = 6
    for name in ("o.png", "o.jpg"):
        Image.fromarray(_rgb(6, 10)).save(tmp_path / name, exif=exif)

    def no_decoding(self):
        raise AssertionError("image_size decoded the image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    assert image_size(str(tmp_path / "o.png")) == (10, 6)
    assert image_size(str(tmp_path / "o.jpg")) == (10, 6)
