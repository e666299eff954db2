"""Data-parallel training on MLX's distributed engine (`mx.distributed`, started by `mlx.launch`).

Every rank holds the whole model and data, takes its slice of every global
micro-batch, and the LoRA gradients are summed across ranks before one identical
optimizer step. MLX provides the group and the collectives; this module adds what
it lacks: a deadline on them (see watchdog.py), a start-up check that every rank
has the same model, data and settings, a broadcast from rank 0 (an `all_sum` of
rank 0's values and zeros) and the gathering of uneven per-rank rows.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager

import mlx.core as mx
import numpy as np
from mlx import nn
from mlx.utils import tree_map

from zephyr_local.errors import ZephyrError

CONNECT_TIMEOUT_ENV = "ZEPHYR_LOCAL_DIST_CONNECT_TIMEOUT"  # init and the first all_sum
TIMEOUT_ENV = "ZEPHYR_LOCAL_DIST_TIMEOUT"  # every later collective (a slow rank's step included)
CONNECT_TIMEOUT, TIMEOUT = 120.0, 1800.0
# Set by mlx.launch (ring, jaccl), mpirun, or the NCCL launcher.
LAUNCH_ENV = ("MLX_HOSTFILE", "MLX_JACCL_COORDINATOR", "OMPI_COMM_WORLD_SIZE", "MLX_WORLD_SIZE")


class DistributedError(ZephyrError):
    """The ranks disagree (model, data, settings) or cannot reach each other.

    `collective` errors are raised on every rank alike; rank 0 alone reports them.
    """

    collective = True


def _seconds(env: str, default: float) -> float:
    try:
        return float(os.environ.get(env, default))
    except ValueError:
        raise ZephyrError(f"{env}={os.environ[env]!r} is not a number of seconds") from None


def _hostfile() -> list:
    """The ring hostfile mlx.launch wrote (one list of ip:port per rank), or []."""
    try:
        with open(os.environ.get("MLX_HOSTFILE", "")) as f:
            return json.load(f) or []
    except (OSError, ValueError):
        return []


def rank_name(rank: int) -> str:
    """`rank 1 (10.0.0.2)` where the ring hostfile gives an address, else `rank 1`."""
    hosts = _hostfile()
    if rank < len(hosts) and hosts[rank]:
        return f"rank {rank} ({str(hosts[rank][0]).rsplit(':', 1)[0]})"
    return f"rank {rank}"


class Dist:
    """This process's place in the group, and the collectives the trainer needs."""

    def __init__(self, group=None, watchdog=None):
        self.group, self.watchdog = group, watchdog
        self.rank = group.rank() if group is not None else 0
        self.size = group.size() if group is not None else 1
        self.timeout = _seconds(TIMEOUT_ENV, TIMEOUT)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: np.ndarray) -> np.ndarray:
        """This rank's contiguous slice of a global micro-batch (sizes differ by at most 1)."""
        return np.array_split(np.asarray(idx), self.size)[self.rank] if self.size > 1 else idx

    @contextmanager
    def deadline(self, what: str):
        """Stop this rank with a clear message if the block's collectives do not return."""
        if self.watchdog is None:
            yield
            return
        others = rank_name(1 - self.rank) if self.size == 2 else "the other ranks"
        self.watchdog.arm(self.timeout, (
            f"{rank_name(self.rank)}: no answer from {others} for {self.timeout:.0f} s "
            f"during {what} (a rank failed or MLX's ring all_sum hung); stopped. Continue "
            f"from the last checkpoint with --resume ({TIMEOUT_ENV} sets the limit)."))
        try:
            yield
        finally:
            self.watchdog.disarm()

    def all_sum(self, x: mx.array, what: str) -> mx.array:
        if self.size == 1:
            return x
        with self.deadline(what):
            y = mx.distributed.all_sum(x, group=self.group, stream=mx.cpu)
            mx.eval(y)
        return y

    def sum_gradients(self, grads, what: str):
        """The sum of every rank's gradients (each rank's loss is already weighted by its
        share of the global batch); average_gradients does the batched all_sum."""
        if self.size == 1:
            return grads
        with self.deadline(what):
            avg = nn.average_gradients(grads, group=self.group, communication_stream=mx.cpu)
            out = tree_map(lambda g: g * self.size, avg)
            mx.eval(out)
        return out

    def broadcast(self, tree, what: str):
        """Rank 0's values of an array tree whose shapes every rank knows."""
        if self.size == 1:
            return tree
        mine = tree if self.is_main else tree_map(mx.zeros_like, tree)
        with self.deadline(what):
            out = tree_map(lambda x: mx.distributed.all_sum(x, group=self.group,
                                                            stream=mx.cpu), mine)
            mx.eval(out)
        return out

    def broadcast_json(self, obj, what: str):
        """Rank 0's JSON-able value (the others pass anything)."""
        if self.size == 1:
            return obj
        data = json.dumps(obj).encode() if self.is_main else b""
        n = int(self.broadcast(mx.array([len(data)], mx.int32), what).item())
        buf = np.frombuffer(data, np.uint8) if self.is_main else np.zeros(n, np.uint8)
        got = self.broadcast(mx.array(buf.astype(np.int32)), what)
        return json.loads(np.array(got).astype(np.uint8).tobytes().decode())

    def sizes(self, n: int) -> list[int]:
        """How many of n rows each rank's shard() holds."""
        return [len(s) for s in np.array_split(np.arange(n), self.size)]

    def gather_rows(self, local: np.ndarray, sizes: list[int], what: str) -> np.ndarray:
        """Every rank's rows (rank r holds sizes[r] of them), concatenated in rank order."""
        if self.size == 1:
            return local
        pad = np.zeros((max(sizes) - len(local), *local.shape[1:]), local.dtype)
        with self.deadline(what):
            got = mx.distributed.all_gather(mx.array(np.concatenate([local, pad])),
                                            group=self.group, stream=mx.cpu)
            mx.eval(got)
        parts = np.split(np.array(got), self.size)
        return np.concatenate([p[:n] for p, n in zip(parts, sizes)])

    def any(self, flag: bool, what: str) -> bool:
        """Whether any rank's flag is set."""
        return bool(self.all_sum(mx.array([float(flag)]), what).item() > 0)

    def check_same(self, hashes: dict[str, str]) -> None:
        """Raise DistributedError naming every rank whose hashes differ from rank 0's."""
        if self.size == 1:
            return
        row = np.concatenate([np.frombuffer(hashlib.sha256(h.encode()).digest()[:16], np.int32)
                              for h in hashes.values()])
        with self.deadline("the start-up check of model and data"):
            got = mx.distributed.all_gather(mx.array(row)[None], group=self.group, stream=mx.cpu)
            mx.eval(got)
        table = np.array(got).reshape(self.size, len(hashes), 4)
        bad = []
        for r in range(1, self.size):
            what = [k for j, k in enumerate(hashes) if (table[r, j] != table[0, j]).any()]
            if what:
                bad.append(f"{rank_name(r)} has different {' and '.join(what)} from rank 0")
        if bad:
            raise DistributedError("; ".join(bad) + ": copy the same model and data files to "
                                   "every host and launch the same command")

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.close()
            self.watchdog = None


def scorer(dist: Dist):
    """batched_logps with the rows split across the ranks; every rank gets all results."""
    from zephyr_local.train.logprobs import batched_logps

    if dist.size == 1:
        return batched_logps

    def score(model, seqs, batch_size: int, with_logits: bool = False, progress=None) -> tuple:
        mine = dist.shard(np.arange(len(seqs)))
        width = 3 if with_logits else 2
        if len(mine):
            cols = batched_logps(model, [seqs[i] for i in mine], batch_size, with_logits,
                                 progress)
        else:
            cols = [np.zeros(0, np.float32)] * width
        local = np.stack([c.astype(np.float32) for c in cols], axis=1)
        rows = dist.gather_rows(local, dist.sizes(len(seqs)), "the log-probs of the data")
        return tuple(rows[:, j] for j in range(width))

    return score


_current: Dist | None = None


def launched() -> bool:
    """Whether this process was started as one rank of a distributed launch."""
    return any(os.environ.get(k) for k in LAUNCH_ENV)


def init() -> Dist:
    """Join the launch's group (once per process); a single-process Dist otherwise.

    Joining has a deadline: a rank that cannot reach its ring neighbours stops with a
    message that names them instead of waiting forever.
    """
    global _current
    if _current is not None:
        return _current
    if not launched():
        _current = Dist()
        return _current
    from zephyr_local.train.watchdog import Watchdog

    limit = _seconds(CONNECT_TIMEOUT_ENV, CONNECT_TIMEOUT)
    rank = int(os.environ.get("MLX_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))
    hosts = _hostfile()
    n = len(hosts)
    peers = sorted({(rank - 1) % n, (rank + 1) % n} - {rank}) if n > 1 else []
    who = " and ".join(rank_name(p) for p in peers) or "the other ranks"
    wd = Watchdog()
    wd.arm(limit, f"{rank_name(rank)}: could not reach {who} within {limit:.0f} s: start the same "
                  f"command on every host (mlx.launch does) and check that the addresses in the "
                  f"hostfile are reachable ({CONNECT_TIMEOUT_ENV} sets the limit)")
    group = mx.distributed.init()
    check = mx.distributed.all_sum(mx.array([1.0]), group=group, stream=mx.cpu)
    mx.eval(check)
    wd.disarm()
    if int(check.item()) != group.size():
        raise DistributedError(f"rank {group.rank()}: the first all_sum returned {check.item()} "
                               f"for {group.size()} ranks: the group is broken")
    _current = Dist(group, wd)
    return _current


def describe() -> dict:
    """For `info`: whether a distributed group is active, its backend hint and size."""
    if not launched():
        return {"active": False, "size": 1, "rank": 0}
    d = init()
    return {"active": d.size > 1, "size": d.size, "rank": d.rank}
