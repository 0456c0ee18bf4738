"""Time per mixer call with and without ``global_pairing`` (partners from the whole DDP batch).

Two gloo processes on the CPU, one thread each, 64x3x32x32 float32 per rank; best of 5 runs of
200 calls. The difference is mostly the all-gathers of the batch, its labels and one key per sample.

    OMP_NUM_THREADS=1 python benchmarks/global_pairing.py
"""

import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import openmix

CASES = [("mixup", "batch"), ("mixup", "elem"), ("cutmix", "batch"), ("cutmix", "elem")]
CALLS, WARMUP, REPEATS = 200, 20, 5


def worker(rank, world, port, out):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    x = torch.rand(64, 3, 32, 32)
    y = torch.randint(0, 10, (64,))
    rows = []
    for name, mode in CASES:
        result = {}
        for scope in (False, True):
            mixer = openmix.build(name, num_classes=10, mode=mode, seed=0, global_pairing=scope)
            for _ in range(WARMUP):
                mixer(x, y)
            best = float("inf")
            for _ in range(REPEATS):  # best of REPEATS runs of CALLS calls
                dist.barrier()
                start = time.perf_counter()
                for _ in range(CALLS):
                    mixer(x, y)
                best = min(best, (time.perf_counter() - start) / CALLS)
            result[scope] = best * 1e6
        rows.append((name, mode, result[False], result[True]))
    if rank == 0:
        out.put(rows)
    dist.destroy_process_group()


if __name__ == "__main__":
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(worker, args=(2, port, queue), nprocs=2, join=True)
    print(f"torch {torch.__version__}, gloo, 2 processes x 1 thread, 64x3x32x32 float32 per rank; best of {REPEATS} x {CALLS} calls")
    print("| mixer | mode | per rank (us/call) | global_pairing (us/call) | ratio |")
    print("|---|---|---|---|---|")
    for name, mode, local, glob in queue.get():
        print(f"| {name} | {mode} | {local:.0f} | {glob:.0f} | {glob / local:.1f}x |")
