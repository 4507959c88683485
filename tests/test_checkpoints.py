"""Checkpoints: atomic writes, loading that never runs code, damaged files refused, and `--ckpt_path last`."""

import errno
import io
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from torch.serialization import get_unsafe_globals_in_checkpoint

from mnist_rnn.errors import CheckpointError, OutputError
from mnist_rnn.run.checkpoints import SafeCheckpointIO, read_checkpoint
from mnist_rnn.run.folders import newest_checkpoint
from tests.conftest import TINY, cli_error


@pytest.fixture
def good(tiny_run, tmp_path, monkeypatch):
    """A copy of a real checkpoint in a fresh working folder."""
    monkeypatch.chdir(tmp_path)
    return Path(shutil.copy(tiny_run["run_dir"] / "checkpoints" / "last.ckpt", tmp_path / "good.ckpt"))


WRITER = """
import sys, torch
from mnist_rnn.run.checkpoints import SafeCheckpointIO
# 128 MB: long enough to write and sync that the test kills this process in the middle of it.
SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2**25)}, "global_step": 2}, sys.argv[1])
"""


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_intact(tmp_path):
    target = tmp_path / "last.ckpt"
    SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 1}, target)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target)])
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".last.ckpt.*.tmp")):
        assert writer.poll() is None, "the writer finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    writer.kill()
    writer.wait()
    assert list(tmp_path.glob(".last.ckpt.*.tmp")), "killed after the write: the test proved nothing"
    previous = read_checkpoint(target)
    assert previous["global_step"] == 1 and torch.equal(previous["state_dict"]["w"], torch.zeros(3))
    # The next save clears the half-written leftover.
    SafeCheckpointIO().save_checkpoint({"state_dict": {}, "global_step": 3}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_full_disk_during_a_checkpoint_write_leaves_the_previous_one_and_says_so(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 1}, target)

    def disk_full(fd):  # the file system reports the lack of space when the data reaches the disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    newer = {"state_dict": {"w": torch.ones(300)}, "global_step": 2}
    size = io.BytesIO()
    torch.save(newer, size)
    needed = f"{size.tell() / 1000:.1f} kB"  # torch.save's archive of 300 floats: a few kB
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OutputError) as refused:
        SafeCheckpointIO().save_checkpoint(newer, target)
    assert re.fullmatch(
        rf"cannot write {re.escape(str(target))}: the disk is full \(\S+ \w+ free, about {needed} needed\);"
        rf" the checkpoints in {re.escape(str(tmp_path))} are intact; free space, then run the same command with"
        r" --ckpt_path last",
        str(refused.value),
    ), refused.value
    assert read_checkpoint(target)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


class Payload:
    """Unpickling this creates a file: the stand-in for code a malicious checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_carrying_pickled_code_is_refused_without_running_it(good, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    checkpoint = read_checkpoint(good)
    checkpoint["payload"] = Payload(marker)
    torch.save(checkpoint, tmp_path / "evil.ckpt")

    for args in (["test", "--ckpt_path", "evil.ckpt"], ["fit", "-c", TINY, "--ckpt_path", "evil.ckpt", "--weights_only", "false"]):
        message = cli_error(capsys, *args)
        assert message == (
            "checkpoint evil.ckpt holds pickled code (io.open) and loading it could run that code, so it is"
            " refused; use checkpoints written by mnist-rnn"
        )
        assert not marker.exists()
    with pytest.raises(CheckpointError, match="pickled code"):
        SafeCheckpointIO().load_checkpoint(tmp_path / "evil.ckpt", weights_only=False)
    assert not marker.exists()
    # The payload is real: an unguarded load runs it.
    torch.load(tmp_path / "evil.ckpt", weights_only=False)
    assert marker.exists()


def test_the_projects_checkpoints_need_nothing_outside_the_weights_only_allow_list(tiny_run):
    for ckpt in (tiny_run["run_dir"] / "checkpoints").glob("*.ckpt"):
        assert get_unsafe_globals_in_checkpoint(str(ckpt)) == []


def _flip_a_byte_of_the_weights(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        biggest = max(archive.infolist(), key=lambda info: info.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[biggest.header_offset + 26 : biggest.header_offset + 30])
    data[biggest.header_offset + 30 + name_len + extra_len + biggest.file_size // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _damage(kind: str, good: Path) -> Path:
    bad = good.with_name(f"{kind}.ckpt")
    checkpoint = read_checkpoint(good)
    if kind == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "flipped":
        shutil.copy(good, bad)
        _flip_a_byte_of_the_weights(bad)
    elif kind == "text":
        bad.write_text("not a checkpoint\n")
    elif kind == "other_zip":
        with zipfile.ZipFile(bad, "w") as archive:
            archive.writestr("notes.txt", "a zip archive, but not one torch.save wrote")
    elif kind == "state_dict_only":
        torch.save(checkpoint["state_dict"], bad)
    elif kind == "other_model":
        torch.save({**checkpoint, "hyper_parameters": {"channels": 32}}, bad)
    elif kind == "no_settings":
        torch.save({k: v for k, v in checkpoint.items() if k != "hyper_parameters"}, bad)
    elif kind == "weights_only":
        torch.save({k: v for k, v in checkpoint.items() if k in ("state_dict", "hyper_parameters", "epoch")}, bad)
    elif kind == "folder":
        bad.mkdir()
    return bad


BAD = {
    "missing": ("test", r"checkpoint missing\.ckpt does not exist; pass a checkpoint file written by `mnist-rnn fit`"),
    "folder": ("test", r"checkpoint folder\.ckpt is not a file"),
    "truncated": ("test", r"checkpoint truncated\.ckpt is truncated or corrupted"),
    "flipped": ("test", r"checkpoint flipped\.ckpt is corrupted \(bad checksum in .*\)"),
    "text": ("test", r"text\.ckpt is not a checkpoint \(not a torch\.save archive\)"),
    "other_zip": ("test", r"other_zip\.ckpt is not a checkpoint \(not a torch\.save archive\)"),
    "state_dict_only": ("test", r"state_dict_only\.ckpt is not a Lightning checkpoint \(it has no state_dict\)"),
    "other_model": ("test", r"other_model\.ckpt was made for a different model \(settings channels are unknown here\)"),
    "no_settings": (
        "test",
        r"no_settings\.ckpt was made with a different model shape \(net\.rnn\.weight_ih_l0 is \(64, 28\) there,"
        r" \(512, 28\) here\); pass the checkpoint's own model settings",
    ),
    "weights_only": ("fit", r"weights_only\.ckpt holds weights only, so training cannot resume from it"),
}


@pytest.mark.parametrize("kind,command,message", [(k, *v) for k, v in BAD.items()], ids=BAD.keys())
def test_a_bad_checkpoint_is_refused_in_one_line_before_anything_runs(good, capsys, kind, command, message):
    bad = good.with_name(f"{kind}.ckpt") if kind == "missing" else _damage(kind, good)
    args = [command, "-c", TINY, "--ckpt_path", bad.name] if command == "fit" else [command, "--ckpt_path", bad.name]
    assert re.search(message, cli_error(capsys, *args))
    assert not Path("runs").exists()


def test_a_checkpoint_that_cannot_be_read_is_refused_in_one_line(good, capsys, monkeypatch):
    read_bytes = Path.read_bytes

    def refused(path: Path) -> bytes:  # what chmod 000 does for a user other than root (the tests may run as root)
        if path.name == good.name:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", refused)
    assert cli_error(capsys, "test", "--ckpt_path", good.name) == (
        f"checkpoint {good.name} cannot be read (Permission denied); fix its permissions or pass a checkpoint file"
        " written by `mnist-rnn fit` (runs/<config>/version_<N>/checkpoints/*.ckpt)"
    )


def test_last_with_no_run_to_resume_is_an_error_not_a_fresh_start(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    message = cli_error(capsys, "fit", "-c", TINY, "--ckpt_path", "last")
    assert message.startswith("--ckpt_path last: no checkpoint under runs/tiny/ to resume; start a new run without --ckpt_path")
    assert not Path("runs").exists()


def test_last_is_the_newest_checkpoint_of_the_newest_run_that_has_one(tmp_path):
    files = {
        "version_2/checkpoints/last.ckpt": 500,
        "version_10/checkpoints/last.ckpt": 100,
        "version_10/checkpoints/epoch03.ckpt": 200,
        "version_11/config.yaml": 600,  # killed before its first checkpoint
    }
    for name, mtime in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        os.utime(path, (mtime, mtime))
    assert newest_checkpoint(tmp_path) == tmp_path / "version_10/checkpoints/epoch03.ckpt"
    assert newest_checkpoint(tmp_path / "nothing") is None
