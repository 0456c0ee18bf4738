"""The run lock: one trainer per run folder, released however its holder ends."""

import os
import signal
import sys

import pytest

from openmix.run_lock import LOCK_FILE, lock_holder, run_lock

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="runs are not locked where fcntl is missing")

@pytest.fixture
def holder(tmp_path, hold_lock):
    return hold_lock(tmp_path / "run")


def test_a_run_held_by_another_process_is_taken(tmp_path, holder):
    with run_lock(tmp_path / "run") as held:
        assert not held
    assert lock_holder(tmp_path / "run")["pid"] == holder.pid
    assert (tmp_path / "run" / LOCK_FILE).exists()  # the refused attempt left the holder's lock alone


def test_a_killed_holder_leaves_the_run_free(tmp_path, holder):
    os.kill(holder.pid, signal.SIGKILL)  # no clean-up runs: the file stays, its lock goes with the process
    holder.wait()
    assert (tmp_path / "run" / LOCK_FILE).exists() and lock_holder(tmp_path / "run") is None
    with run_lock(tmp_path / "run") as held:
        assert held and lock_holder(tmp_path / "run")["pid"] == os.getpid()


def test_the_lock_goes_when_the_block_raises(tmp_path):
    with pytest.raises(RuntimeError), run_lock(tmp_path) as held:
        assert held
        raise RuntimeError
    assert not (tmp_path / LOCK_FILE).exists() and lock_holder(tmp_path) is None
    with run_lock(tmp_path) as held:
        assert held
