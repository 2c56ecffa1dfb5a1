"""Config: TOML + CHARGECTL_* overrides into frozen dataclasses; errors name the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from chargectl.common.config import build, load_config
from chargectl.common.errors import ConfigError


@dataclass(frozen=True)
class Plug:
    host: str
    port: int = 80


@dataclass(frozen=True)
class Section:
    poll_interval_s: float = 5.0
    discovery: bool = True
    name: str = "x"
    plugs: list[Plug] = field(default_factory=list)
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.poll_interval_s <= 0:
            raise ValueError("poll_interval_s must be positive")


def test_file_then_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'backend = "gcp"\nproject = "p1"\n[agent]\npoll_interval_s = 2\nplugs = [{host = "10.0.0.5"}]\n'
    )
    cfg = load_config(path, {"CHARGECTL_AGENT__DISCOVERY": "false", "CHARGECTL_PROJECT": "p2", "HOME": "/x"})
    assert cfg.backend == "gcp" and cfg.project == "p2" and cfg.source == path
    agent = cfg.section("agent", Section)
    assert agent == Section(poll_interval_s=2.0, discovery=False, plugs=[Plug("10.0.0.5", 80)])


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('state_dir = "/var/lib/chargectl"\n')
    cfg = load_config(None, {"CHARGECTL_CONFIG": str(path)})
    assert cfg.state_dir == Path("/var/lib/chargectl")
    assert cfg.section("hub", Section) == Section()


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ('backend = "cloud"\n', {}, "backend: must be one of 'local', 'gcp'"),
        ('[agent]\npoll_interval_s = "fast"\n', {}, "agent.poll_interval_s: expected a number"),
        ("[agent]\npoll_intervl_s = 1\n", {}, "unknown config key [agent] 'poll_intervl_s'"),
        ("[agent]\npoll_interval_s = -1\n", {}, "poll_interval_s must be positive"),
        ("[agent]\nplugs = [{port = 80}]\n", {}, "agent.plugs[0]"),
        ("", {"CHARGECTL_AGENT__DISCOVERY": "maybe"}, "agent.discovery: expected true or false"),
        ("bogus = 1\n", {}, "unknown config key 'bogus'"),
        ("[agent\n", {}, "not valid TOML"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env).section("agent", Section)
    assert message in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", {})


def test_build_converts_optional_and_lists() -> None:
    assert build(Section, {"limit": 3}).limit == 3
    assert build(Section, {"limit": None}).limit is None
    with pytest.raises(ConfigError, match="expected a list"):
        build(Section, {"plugs": "10.0.0.1"})
