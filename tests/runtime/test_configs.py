"""runtime.configs: dataclass configs from mappings/YAML with strict keys, types and enums."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runtime.configs import from_mapping, load_yaml, to_dict
from runtime.errors import ConfigError


class Mode(str, enum.Enum):
    FAST = "fast"
    SLOW = "slow"


@dataclass(frozen=True)
class Inner:
    lr: float = 0.1
    steps: int = 10


@dataclass(frozen=True)
class Outer:
    name: str = "run"
    mode: Mode = Mode.FAST
    inner: Inner = field(default_factory=Inner)
    size: tuple[int, int] = (64, 64)
    flag: bool = False
    tag: str | None = None
    out: Path | None = None


@dataclass(frozen=True)
class Validated:
    n: int = 1

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")


def test_empty_and_none_give_defaults() -> None:
    assert from_mapping(Outer, None) == Outer()
    assert from_mapping(Outer, {}) == Outer()


def test_nested_enum_tuple_and_int_to_float() -> None:
    cfg = from_mapping(Outer, {"name": "x", "mode": "slow", "inner": {"lr": 1, "steps": 3}, "size": [32, 48]})
    assert cfg.mode is Mode.SLOW
    assert cfg.inner == Inner(lr=1.0, steps=3)
    assert type(cfg.inner.lr) is float
    assert cfg.size == (32, 48) and isinstance(cfg.size, tuple)
    assert from_mapping(Outer, {"tag": None}).tag is None
    assert from_mapping(Outer, {"tag": "t"}).tag == "t"


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as exc:
        from_mapping(Outer, {"nmae": "x", "bogus": 1})
    assert str(exc.value) == (
        "config: unknown key(s) ['bogus', 'nmae']; valid keys: ['flag', 'inner', 'mode', 'name', 'out', 'size', 'tag']"
    )


def test_nested_unknown_key_names_the_path() -> None:
    with pytest.raises(ConfigError) as exc:
        from_mapping(Outer, {"inner": {"learning_rate": 0.1}}, where="train.yaml")
    assert str(exc.value) == "train.yaml.inner: unknown key(s) ['learning_rate']; valid keys: ['lr', 'steps']"


def test_bad_enum_value_lists_members() -> None:
    with pytest.raises(ConfigError) as exc:
        from_mapping(Outer, {"mode": "medium"})
    assert str(exc.value) == "config.mode: 'medium' is not one of ['fast', 'slow']"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"inner": {"steps": "ten"}}, "config.inner.steps: expected int, got 'ten' (str)"),
        ({"inner": {"steps": 2.5}}, "config.inner.steps: expected int, got 2.5 (float)"),
        ({"inner": {"steps": True}}, "config.inner.steps: expected int, got True"),
        ({"inner": {"lr": "0.1"}}, "config.inner.lr: expected float, got '0.1' (str)"),
        ({"inner": {"lr": True}}, "config.inner.lr: expected float, got True (bool)"),
        ({"flag": 1}, "config.flag: expected bool, got 1 (int)"),
        ({"name": 3}, "config.name: expected str, got 3 (int)"),
        ({"tag": 5}, "config.tag: expected str, got 5 (int)"),
    ],
)
def test_wrong_types(data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        from_mapping(Outer, data)
    assert str(exc.value) == fragment


def test_non_mapping_sections() -> None:
    with pytest.raises(ConfigError, match="^config: expected a mapping of keys to values, got list$"):
        from_mapping(Outer, [1, 2])
    with pytest.raises(ConfigError, match="^config.inner: expected a mapping of keys to values, got int$"):
        from_mapping(Outer, {"inner": 5})


def test_post_init_value_error_becomes_config_error() -> None:
    with pytest.raises(ConfigError, match="^cfg: n must be >= 0, got -1$"):
        from_mapping(Validated, {"n": -1}, where="cfg")


def test_to_dict_is_plain_json_and_round_trips() -> None:
    cfg = from_mapping(Outer, {"mode": "slow", "inner": {"lr": 0.5}, "size": [3, 4], "tag": "a"})
    d = to_dict(cfg)
    assert d == {
        "name": "run",
        "mode": "slow",
        "inner": {"lr": 0.5, "steps": 10},
        "size": [3, 4],
        "flag": False,
        "tag": "a",
        "out": None,
    }
    assert json.loads(json.dumps(d)) == d
    assert from_mapping(Outer, d) == cfg
    assert to_dict(Outer(out=Path("runs/a")))["out"] == "runs/a"
    assert to_dict({"k": (Mode.FAST, Path("p"))}) == {"k": ["fast", "p"]}


def test_load_yaml(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("name: x\ninner:\n  lr: 0.01\nsize: [1, 2]\n", encoding="utf-8")
    assert load_yaml(good) == {"name": "x", "inner": {"lr": 0.01}, "size": [1, 2]}
    assert from_mapping(Outer, load_yaml(good)).size == (1, 2)

    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    assert load_yaml(empty) == {}


def test_load_yaml_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as exc:
        load_yaml(missing)
    assert str(exc.value) == f"{missing}: config file not found"

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_yaml(bad)
    assert str(exc.value).startswith(f"{bad}: invalid YAML:")

    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_yaml(listy)
    assert str(exc.value) == f"{listy}: expected a mapping at the top level, got list"
