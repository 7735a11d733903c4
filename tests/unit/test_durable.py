"""common/durable.py: a file written atomically is whole under its name, no temp file is left, and its data then
the folder holding its name are fsynced, in that order around the rename."""

from __future__ import annotations

import os

from common.durable import publish, sync_tree, temp_path, write_atomically


def test_the_data_is_synced_before_the_rename_and_the_folder_after_it(tmp_path, fsynced, monkeypatch):
    path = tmp_path / "state.json"
    path.write_text("the previous state")
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (fsynced.append("rename"), real_replace(src, dst)))
    write_atomically(path, '{"step": 3}')
    assert path.read_text() == '{"step": 3}' and [p.name for p in tmp_path.iterdir()] == ["state.json"]
    assert fsynced == [path.stat().st_ino, "rename", tmp_path.stat().st_ino]


def test_bytes_are_written_as_they_are_and_text_as_utf8(tmp_path):
    write_atomically(tmp_path / "a.bin", b"\x00\xff")
    write_atomically(tmp_path / "b.txt", "naïve")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\xff" and (tmp_path / "b.txt").read_bytes() == "naïve".encode()


def test_a_file_a_library_wrote_to_the_temp_path_is_published_whole(tmp_path, fsynced):
    final = tmp_path / "model.pt"
    tmp = temp_path(final)
    tmp.write_bytes(b"weights")  # as torch.save would
    assert publish(tmp, final) == final and final.read_bytes() == b"weights" and not tmp.exists()
    assert fsynced == [final.stat().st_ino, tmp_path.stat().st_ino]


def test_a_tree_others_wrote_is_synced_file_by_file_with_its_folders_and_its_name(tmp_path, fsynced):
    tree = tmp_path / "step_000001"
    (tree / "policy" / "zero").mkdir(parents=True)
    (tree / "policy" / "zero" / "shard.pt").write_bytes(b"w")
    (tree / "policy" / "latest").write_text("zero")
    sync_tree(tree)
    files = {(tree / "policy" / "zero" / "shard.pt").stat().st_ino, (tree / "policy" / "latest").stat().st_ino}
    folders = {p.stat().st_ino for p in (tree / "policy" / "zero", tree / "policy", tree, tmp_path)}
    assert set(fsynced[:2]) == files and set(fsynced[2:]) == folders and len(fsynced) == 4 + 2
