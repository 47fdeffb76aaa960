"""Config system: defaults, safe YAML with _BASE_, checked keys and types, CUSTOM_IMPORTS."""
import sys
import textwrap

import pytest

from retinakit.config import CfgNode, ConfigError, configurable, get_cfg, register_config_extension


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_defaults_have_documented_groups():
    cfg = get_cfg()
    for group in ("MODEL", "INPUT", "DATASETS", "DATALOADER", "SOLVER", "TEST"):
        assert isinstance(cfg[group], CfgNode)
    assert cfg.OUTPUT_DIR and isinstance(cfg.SEED, int) and cfg.CUSTOM_IMPORTS == []
    assert get_cfg() is not get_cfg()  # fresh copies


def test_base_inheritance_and_override(tmp_path):
    _write(tmp_path, "base.yaml", """
        MODEL:
          RETINANET:
            NUM_CLASSES: 5
        SOLVER:
          BASE_LR: 0.02
    """)
    child = _write(tmp_path, "child.yaml", """
        _BASE_: "base.yaml"
        SOLVER:
          BASE_LR: 1
        INPUT:
          MIN_SIZE_TRAIN: (320, 352)
    """)
    cfg = get_cfg()
    cfg.merge_from_file(child)
    assert cfg.MODEL.RETINANET.NUM_CLASSES == 5
    assert cfg.SOLVER.BASE_LR == 1.0 and isinstance(cfg.SOLVER.BASE_LR, float)
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (320, 352)


def test_unknown_key_names_closest_keys(tmp_path):
    bad = _write(tmp_path, "bad.yaml", """
        MODEL:
          RETINANET:
            NUM_CLASS: 3
    """)
    with pytest.raises(ConfigError) as e:
        get_cfg().merge_from_file(bad)
    msg = str(e.value)
    assert "MODEL.RETINANET.NUM_CLASS" in msg and "MODEL.RETINANET.NUM_CLASSES" in msg and bad in msg


def test_wrong_type_is_rejected_with_key_and_source():
    with pytest.raises(ConfigError, match=r"SOLVER\.MAX_ITER .*command line.*int"):
        get_cfg().merge_from_list(["SOLVER.MAX_ITER", "many"])
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        get_cfg().merge_from_list(["SOLVER.MAX_ITER"])


def test_merge_from_list_parses_literals():
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.ANCHOR_GENERATOR.SIZES", "[[16], [32]]", "MODEL.DEVICE", "cpu", "SOLVER.AMP.ENABLED", "True"])
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[16], [32]]
    assert cfg.MODEL.DEVICE == "cpu" and cfg.SOLVER.AMP.ENABLED is True


def test_yaml_python_tags_are_refused(tmp_path):
    evil = _write(tmp_path, "evil.yaml", """
        SOLVER:
          BASE_LR: !!python/object/apply:eval ["0.1 * 2"]
    """)
    with pytest.raises(ConfigError, match="safe_load"):
        get_cfg().merge_from_file(evil)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        get_cfg().merge_from_file(str(tmp_path / "nope.yaml"))


def test_custom_imports_add_config_keys(tmp_path, monkeypatch):
    pkg = tmp_path / "my_ext_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        from retinakit.config import CfgNode, register_config_extension

        @register_config_extension
        def add_my_keys(cfg):
            if "MY_EXT" not in cfg.MODEL:
                cfg.MODEL.MY_EXT = CfgNode({"DEPTH": 10})
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    path = _write(tmp_path, "ext.yaml", """
        CUSTOM_IMPORTS: ["my_ext_pkg"]
        MODEL:
          MY_EXT:
            DEPTH: 12
    """)
    cfg = get_cfg()
    cfg.merge_from_file(path)
    assert cfg.MODEL.MY_EXT.DEPTH == 12
    assert "MY_EXT" in get_cfg().MODEL  # later configs know the keys too
    from retinakit.config import config as config_module

    config_module._CONFIG_EXTENSIONS.remove(sys.modules["my_ext_pkg"].add_my_keys)


def test_unimportable_custom_import_is_explained():
    with pytest.raises(ConfigError, match="no_such_module_xyz"):
        get_cfg().merge_from_list(["CUSTOM_IMPORTS", "['no_such_module_xyz']"])


class _Thing:
    @configurable
    def __init__(self, *, a: int, b: str = "x"):
        self.a, self.b = a, b

    @classmethod
    def from_config(cls, cfg, scale=1):
        return {"a": cfg.MODEL.RETINANET.NUM_CLASSES * scale, "b": cfg.MODEL.DEVICE}


def test_configurable_from_cfg_or_kwargs():
    cfg = get_cfg()
    t = _Thing(cfg, scale=2)
    assert (t.a, t.b) == (160, "auto")
    t = _Thing(cfg, b="override")
    assert (t.a, t.b) == (80, "override")
    t = _Thing(a=3)
    assert (t.a, t.b) == (3, "x")


def test_configurable_function():
    @configurable(from_config=lambda cfg: {"n": cfg.SOLVER.MAX_ITER})
    def f(*, n):
        return n

    assert f(get_cfg()) == 90000 and f(n=3) == 3


def test_register_config_extension_is_idempotent():
    def ext(cfg):
        pass

    register_config_extension(ext)
    register_config_extension(ext)
    from retinakit.config import config as config_module

    assert config_module._CONFIG_EXTENSIONS.count(ext) == 1
    config_module._CONFIG_EXTENSIONS.remove(ext)
