"""Where ridl keeps its state: ``RIDL_HOME`` resolved once per setting and working folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from ridl import settings


def test_ridl_home_follows_the_setting_and_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.setenv("RIDL_HOME", str(tmp_path / "link"))
    assert settings.ridl_home() == (tmp_path / "real").resolve()  # links resolved
    monkeypatch.setenv("RIDL_HOME", str(tmp_path / "a"))
    assert settings.ridl_home() == (tmp_path / "a").resolve()
    monkeypatch.setenv("RIDL_HOME", "state")  # relative: to the working folder of each call
    monkeypatch.chdir(tmp_path / "a")
    assert settings.ridl_home() == (tmp_path / "a" / "state").resolve()
    monkeypatch.chdir(tmp_path / "b")
    assert settings.ridl_home() == (tmp_path / "b" / "state").resolve()
    monkeypatch.delenv("RIDL_HOME")
    assert settings.ridl_home() == (tmp_path / "b" / settings.DEFAULT_HOME).resolve()
    assert settings.releases_dir() == settings.ridl_home() / "releases"
