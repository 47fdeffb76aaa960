"""SerializedList: both codecs give back the items; select/concat/from_buffers."""
import numpy as np
import pytest

from retinakit.data.serialize import SerializedList

ITEMS = [{"file_name": "a.jpg", "image_id": 1, "annotations": [{"bbox": [0.1, 2.0, 3.5, 4.25], "id": 7}]}, {"image_id": "x"}, {}]


@pytest.mark.parametrize("codec", ["pickle", "json"])
def test_round_trip(codec):
    s = SerializedList(ITEMS, codec=codec)
    assert len(s) == 3 and list(s) == ITEMS and s[-1] == {} and s[0:2] == ITEMS[:2]
    with pytest.raises(IndexError):
        s[3]
    assert s.select([2, 0]).codec == codec and list(s.select([2, 0])) == [ITEMS[2], ITEMS[0]]
    assert list(SerializedList.concat([s, s.select([1])])) == [*ITEMS, ITEMS[1]]
    data, ends = s.buffers()
    assert list(SerializedList.from_buffers(data, ends, codec)) == ITEMS
    assert s.nbytes == data.nbytes + ends.nbytes


def test_json_codec_keeps_float_bits():
    vals = [0.1 + 0.2, 1e-300, 123456.789012345, 5e-324]
    assert SerializedList([{"v": vals}], codec="json")[0]["v"] == vals


def test_invalid_buffers_and_codec():
    with pytest.raises(ValueError, match="rise to the data length"):
        SerializedList.from_buffers(np.zeros(3, np.uint8), np.array([5], np.int64), "json")
    with pytest.raises(ValueError, match="codec"):
        SerializedList([], codec="yaml")
    with pytest.raises(ValueError, match="one codec"):
        SerializedList.concat([SerializedList([1]), SerializedList([1], codec="json")])
    assert len(SerializedList([])) == 0
