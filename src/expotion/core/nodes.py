"""Which machine of a multi-machine precompute run this process is: its node rank and the node count.

Read, in this order, from the command line (``--node-rank``/``--num-nodes``), torchrun
(``RANK``/``WORLD_SIZE``), a SLURM job array (``SLURM_ARRAY_TASK_ID`` from
``SLURM_ARRAY_TASK_MIN``, ``SLURM_ARRAY_TASK_COUNT``) and SLURM tasks (``SLURM_PROCID``/
``SLURM_NTASKS``, as set by ``srun``). An array of multi-task jobs numbers its nodes
array task by array task. Without any of them the process is the only node.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


class NodeError(ValueError):
    """The node rank and count are missing a part, or do not fit together; the message names their source."""


@dataclass(frozen=True)
class NodeShare:
    rank: int
    count: int
    source: str  # where rank and count came from, for messages

    def takes(self, index: int) -> bool:
        """Whether this node writes shard ``index`` (of the whole cache's plan): ``index mod count == rank``."""
        return index % self.count == self.rank

    def __str__(self) -> str:
        return f"node {self.rank} of {self.count} ({self.source})"


SINGLE_NODE = NodeShare(0, 1, "single node")


def node_share(rank: int | None = None, count: int | None = None,
               environ: Mapping[str, str] = os.environ) -> NodeShare:
    """This process's node rank and node count (see the module docstring for where they are read)."""
    if rank is not None or count is not None:
        if rank is None or count is None:
            raise NodeError("--node-rank and --num-nodes go together: give both or neither")
        return checked(rank, count, "--node-rank/--num-nodes")
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return checked(integer(environ, "RANK"), integer(environ, "WORLD_SIZE"), "torchrun RANK/WORLD_SIZE")
    array = None
    if "SLURM_ARRAY_TASK_ID" in environ and "SLURM_ARRAY_TASK_COUNT" in environ:
        first = integer(environ, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in environ else 0
        array = checked(integer(environ, "SLURM_ARRAY_TASK_ID") - first, integer(environ, "SLURM_ARRAY_TASK_COUNT"),
                        "SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN/SLURM_ARRAY_TASK_COUNT (array ids must be "
                        "consecutive, e.g. --array=0-3)")
    tasks = None
    if "SLURM_PROCID" in environ and "SLURM_NTASKS" in environ:
        tasks = checked(integer(environ, "SLURM_PROCID"), integer(environ, "SLURM_NTASKS"), "SLURM_PROCID/SLURM_NTASKS")
    if array and tasks and tasks.count > 1:
        return NodeShare(array.rank * tasks.count + tasks.rank, array.count * tasks.count,
                         f"{array.source} x {tasks.source}")
    return array or tasks or SINGLE_NODE


def integer(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError as err:
        raise NodeError(f"${name} is {environ[name]!r}, not an integer") from err


def checked(rank: int, count: int, source: str) -> NodeShare:
    if count < 1 or not 0 <= rank < count:
        raise NodeError(f"node rank {rank} of {count} nodes from {source}: the rank must be in 0..count-1")
    return NodeShare(rank, count, source)
