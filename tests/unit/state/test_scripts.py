"""The Lua scripts are package resources: every ``.lua`` file is found in the installed
package, registered under its name, and shipped in a wheel (pyproject's package data)."""

from __future__ import annotations

import hashlib
import tomllib
from fnmatch import fnmatch
from importlib.resources import files
from pathlib import Path

from state import scripts

ROOT = Path(__file__).resolve().parents[3]


def _lua_files() -> list[str]:
    found = files("state").joinpath("lua").iterdir()
    return sorted(f.name for f in found if f.name.endswith(".lua"))


def test_every_lua_file_is_a_registered_script() -> None:
    found = _lua_files()
    assert found, "no .lua file among the installed package's resources"
    registry = scripts.load_all()
    assert sorted(f"{name}.lua" for name in registry) == found
    for name, script in registry.items():
        assert script.name == name
        assert script.sha == hashlib.sha1(script.text.encode()).hexdigest()
        assert "redis.call" in script.text


def test_the_header_comment_stays_out_of_what_redis_runs() -> None:
    for script in scripts.load_all().values():
        source = files("state").joinpath("lua", f"{script.name}.lua").read_text()
        assert source.startswith("--"), f"{script.name}.lua has no header comment"
        assert not script.text.lstrip().startswith("--")
        assert source.endswith(script.text)


def test_the_store_runs_the_registered_scripts() -> None:
    from state.sessions import SessionStore

    store = SessionStore(None, cap=5, ttl_s=60)  # type: ignore[arg-type]
    registry = scripts.load_all()
    assert store._scripts == {s.sha: s.text for s in registry.values()}


def test_a_wheel_ships_every_lua_file() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"].get("state", [])
    for name in _lua_files():
        assert any(fnmatch(f"lua/{name}", p) for p in patterns), f"{name} not in package data"
