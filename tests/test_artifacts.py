"""One file layer for local folders and object stores: the same calls, the same bytes, and no
half-written file under a real name on either."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from osmf_lib import artifacts


@pytest.fixture(params=["folder", "object store"])
def root(request, tmp_path: Path) -> str:
    return str(tmp_path) if request.param == "folder" else f"{request.getfixturevalue('object_store')}/{tmp_path.name}"


def test_written_files_read_back_list_and_go(root: str) -> None:
    folder = artifacts.join(root, "day", "events")
    assert artifacts.names(folder) == []
    for name in ("part-00001.jsonl", "part-00000.jsonl"):
        artifacts.write_atomically(artifacts.join(folder, name), name.encode())
    artifacts.write_atomically(artifacts.join(folder, "part-00000.jsonl"), b"again")
    assert artifacts.names(folder) == ["part-00000.jsonl", "part-00001.jsonl"]  # no temporary left
    assert artifacts.read_bytes(artifacts.join(folder, "part-00000.jsonl")) == b"again"
    artifacts.remove(artifacts.join(folder, "part-00001.jsonl"))
    assert artifacts.names(folder) == ["part-00000.jsonl"]
    assert not artifacts.exists(artifacts.join(folder, "part-00001.jsonl"))
    with pytest.raises(FileNotFoundError):
        artifacts.read_bytes(artifacts.join(folder, "part-00001.jsonl"))


def test_a_failed_local_write_keeps_the_old_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = artifacts.join(tmp_path, "metadata.jsonl")
    artifacts.write_atomically(target, b"old")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(artifacts._fs(target)[0]), "mv", crash)
    with pytest.raises(OSError, match="disk full"):
        artifacts.write_atomically(target, b"new")
    assert artifacts.read_bytes(target) == b"old"
    assert os.listdir(tmp_path) == ["metadata.jsonl"]


def test_local_paths_become_absolute_and_uris_stay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert artifacts.absolute("landing") == str(tmp_path / "landing")
    assert artifacts.absolute(Path("landing")) == str(tmp_path / "landing")
    assert artifacts.absolute(f"file://{tmp_path}/landing") == str(tmp_path / "landing")
    assert artifacts.absolute("s3a://bucket/landing") == "s3a://bucket/landing"
    assert artifacts.join("s3a://bucket/landing/", "2026-11-01", "dims") == "s3a://bucket/landing/2026-11-01/dims"


@pytest.mark.parametrize("part", ["..", "../../outside", "a/../b", "", ".", "a//b", "p\x00", "a\\..\\b"])
def test_a_part_that_would_leave_its_root_is_refused(tmp_path: Path, part: str) -> None:
    with pytest.raises(artifacts.UnsafePath, match="is no name under"):
        artifacts.join(tmp_path, "2026-11-03", part)


def test_names_and_folders_join_under_the_root(tmp_path: Path) -> None:
    assert artifacts.join(f"{tmp_path}/", "p1", "0/1.png") == f"{tmp_path}/p1/0/1.png"
    assert artifacts.join("s3a://bucket/creatives", "p-1.b_2") == "s3a://bucket/creatives/p-1.b_2"


def test_a_local_file_is_on_disk_before_its_rename_and_the_rename_after(tmp_path: Path, monkeypatch) -> None:
    target = artifacts.join(tmp_path, "report.html")
    steps: list[str] = []
    fs = type(artifacts._fs(target)[0])
    move, sync = fs.mv, os.fsync
    monkeypatch.setattr(fs, "mv", lambda self, *a, **k: steps.append("rename") or move(self, *a, **k))
    monkeypatch.setattr(os, "fsync", lambda fd: steps.append(os.readlink(f"/proc/self/fd/{fd}")) or sync(fd))
    artifacts.write_atomically(target, b"<html>")
    assert steps[1:] == ["rename", str(tmp_path)] and steps[0].startswith(f"{tmp_path}/.report.html.")
