"""jpeg_size (header walk) against PIL's image_size on JPEGs with every EXIF orientation."""
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinakit.data.image_header import jpeg_size
from retinakit.data.image_io import EXIF_ORIENTATION_TAG, image_size

from .helpers import write_image


def _jpeg(path, h, w, orientation=None, progressive=False, xmp=None):
    arr = np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    kw = {"progressive": progressive}
    if orientation is not None:
        exif = Image.Exif()
        exif[EXIF_ORIENTATION_TAG] = orientation
        kw["exif"] = exif.tobytes()
    if xmp is not None:
        kw["xmp"] = xmp
    Image.fromarray(arr).save(path, format="JPEG", **kw)
    return str(path)


@pytest.mark.parametrize("orientation", [None, 1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("progressive", [False, True])
def test_matches_pil(tmp_path, orientation, progressive):
    path = _jpeg(tmp_path / "a.jpg", 21, 34, orientation, progressive)
    assert jpeg_size(path) == image_size(path)
    assert jpeg_size(path) == ((34, 21) if orientation in (5, 6, 7, 8) else (21, 34))


def test_declines_what_it_does_not_fully_read(tmp_path):
    png = tmp_path / "a.png"
    write_image(str(png), 10, 12)
    assert jpeg_size(str(png)) is None  # not a JPEG
    assert jpeg_size(str(tmp_path / "missing.jpg")) is None
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    assert jpeg_size(_jpeg(tmp_path / "x.jpg", 10, 12, xmp=xmp)) is None  # XMP may carry an orientation
    data = Path(_jpeg(tmp_path / "c.jpg", 10, 12)).read_bytes()
    cut = data[: data.index(b"\xff\xc0") + 4]  # ends inside the frame header
    (tmp_path / "cut.jpg").write_bytes(cut)
    assert jpeg_size(str(tmp_path / "cut.jpg")) is None
    buf = io.BytesIO()
    Image.new("RGB", (5, 5)).save(buf, format="BMP")
    (tmp_path / "b.jpg").write_bytes(buf.getvalue())
    assert jpeg_size(str(tmp_path / "b.jpg")) is None
