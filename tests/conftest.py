import subprocess
import sys
import textwrap

import pytest
import torch

_HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from openmix.run_lock import run_lock
    with run_lock(sys.argv[1]) as held:
        print("held" if held else "taken", flush=True)
        time.sleep(300)
""")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread: on a shared 2-core runner it avoids OpenMP stalls on tiny tensors."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def hold_lock():
    """``hold_lock(run_dir)``: another process that holds the run's lock (openmix.run_lock) until the test ends."""
    processes = []

    def start(run_dir) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE, text=True)
        processes.append(process)
        assert process.stdout.readline().strip() == "held"
        return process

    yield start
    for process in processes:
        process.kill()
        process.wait()
