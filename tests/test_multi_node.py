"""Precompute across machines: node rank and count from flags, torchrun or SLURM; per-node locks that let nodes
share a cache; temporaries of other machines; two nodes write the cache of one process; the merged summary."""
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import CLIP_S
from conftest import precompute_config as config
from test_precompute import same_files

from expotion.core.nodes import SINGLE_NODE, NodeError, NodeShare, node_share
from expotion.data.shards import CacheError, ShardWriter, cache_lock, remove_stale_temporaries
from expotion.precompute.pipeline import merge_summary

ROOT = Path(__file__).resolve().parents[1]


def test_node_rank_and_count_come_from_flags_torchrun_or_slurm():
    share = lambda env, rank=None, count=None: (lambda s: (s.rank, s.count))(node_share(rank, count, env))  # noqa: E731
    assert node_share(environ={}) == SINGLE_NODE
    torchrun = {"RANK": "2", "WORLD_SIZE": "4"}
    tasks = {"SLURM_PROCID": "1", "SLURM_NTASKS": "3"}
    array = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_COUNT": "4",
             "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}
    assert share(torchrun) == (2, 4) and share(tasks) == (1, 3) and share(array) == (2, 4)
    assert share({**array, **tasks}) == (2 * 3 + 1, 4 * 3)  # an array of 3-task jobs: array task by array task
    assert share({**tasks, **torchrun}) == (2, 4)  # torchrun inside a SLURM job
    assert share({**torchrun, **tasks}, 0, 2) == (0, 2)  # flags win
    assert node_share(1, 2, {}).source == "--node-rank/--num-nodes"
    with pytest.raises(NodeError, match="--node-rank and --num-nodes go together"):
        node_share(1, None, {})
    with pytest.raises(NodeError, match="node rank 4 of 4 nodes from torchrun RANK/WORLD_SIZE"):
        node_share(environ={"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(NodeError, match="array ids must be consecutive"):
        node_share(environ={"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_COUNT": "4"})  # --array=0-6:2
    with pytest.raises(NodeError, match=r"\$SLURM_PROCID is 'x', not an integer"):
        node_share(environ={"SLURM_PROCID": "x", "SLURM_NTASKS": "2"})
    assert [k for k in range(7) if NodeShare(1, 3, "").takes(k)] == [1, 4]


def wait_message(cache: Path, node: NodeShare) -> tuple[list[str], threading.Thread]:
    """Start taking ``node``'s lock in a thread; return its wait messages and the thread (holding for 0.1 s)."""
    messages: list[str] = []

    def take() -> None:
        with cache_lock(cache, messages.append, node):
            time.sleep(0.1)

    thread = threading.Thread(target=take)
    thread.start()
    return messages, thread


def test_nodes_of_one_run_share_the_cache_and_a_second_copy_of_a_node_waits(tmp_path):
    node0, node1 = NodeShare(0, 2, "test"), NodeShare(1, 2, "test")
    with cache_lock(tmp_path, pytest.fail, node0):
        with cache_lock(tmp_path, pytest.fail, node1):  # another node never waits
            pass
        copy, copy_thread = wait_message(tmp_path, node0)
        single, single_thread = wait_message(tmp_path, SINGLE_NODE)
        time.sleep(1.0)
        assert copy_thread.is_alive() and single_thread.is_alive()  # both wait for node 0
    copy_thread.join(10), single_thread.join(10)
    assert copy == [f"{tmp_path}: node 0 of 2 (test) is already running (pid {os.getpid()} on "
                    f"{socket.gethostname()}); waiting for it to finish (Ctrl-C to stop)"]
    assert single == [f"{tmp_path} is being written by another precompute run (another process); "
                      "waiting for it to finish (Ctrl-C to stop)"]
    with cache_lock(tmp_path, pytest.fail):  # a single-node run holds the cache alone
        waiting, thread = wait_message(tmp_path, node1)
        time.sleep(1.0)
        assert thread.is_alive()
    thread.join(10)
    assert len(waiting) == 1 and "waiting for it to finish before node 1 of 2 (test) starts" in waiting[0]


def test_temporaries_of_other_machines_are_removed_only_from_the_shards_a_node_owns(tmp_path):
    writer = ShardWriter(tmp_path / "train" / "shard-00000.h5", {"split": "train"})
    host = socket.gethostname()
    assert writer.target.tmp.name.startswith(f".shard-00000.tmp-{os.getpid()}-")
    assert writer.target.tmp.name.endswith(f"-{host}.h5")
    finished = subprocess.Popen(["true"])
    finished.wait()
    train = tmp_path / "train"
    dead_here = train / f".shard-00001.tmp-{finished.pid}-0a1b2c3d-{host}.h5"
    owned_there = train / ".shard-00002.tmp-1234-0a1b2c3d-node-b.cluster.h5"
    other_there = train / ".shard-00003.tmp-1234-0a1b2c3d-node-b.cluster.h5"
    for tmp in (dead_here, owned_there, other_there):
        tmp.write_bytes(b"partial")
    removed = remove_stale_temporaries(tmp_path, owned=[train / "shard-00000.h5", train / "shard-00002.h5"])
    assert removed == [dead_here, owned_there]
    assert writer.target.tmp.exists() and other_there.exists()  # a live writer here; another machine's other shard
    writer.abort()


def features_cmd(manifest: Path, cache: Path, tiny_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "precompute" / "extract.py"), "--manifest", str(manifest), "--cache",
            str(cache), "--profile", "tiny", "--tiny-dir", str(tiny_dir), "--clip-seconds", str(CLIP_S),
            "--recordings-per-shard", "2", *extra]


def test_two_nodes_write_the_cache_of_one_process(small_demo, demo_cache, tiny_profile_cfg, tmp_path):
    """Two processes on one cache, started together: node 0 (flags) writes train/shard-00000, node 1 (torchrun's
    variables) val/shard-00000; neither waits for the other, and shards and summary.json are byte-identical to
    those of one process."""
    tiny_dir, cache = Path(tiny_profile_cfg.marlin_path).parent, tmp_path / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    nodes = [subprocess.Popen(features_cmd(small_demo, cache, tiny_dir, "--node-rank", "0", "--num-nodes", "2"),
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
             subprocess.Popen(features_cmd(small_demo, cache, tiny_dir), env={**env, "RANK": "1", "WORLD_SIZE": "2"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    outputs = [node.communicate(timeout=900) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    assert "node 0 of 2 (--node-rank/--num-nodes): writes shards k with k mod 2 == 0" in outputs[0][0]
    assert "1 new shards, 0 reused by node 1 of 2 (torchrun RANK/WORLD_SIZE)" in outputs[1][0]
    assert not any("waiting" in err for _, err in outputs)
    locks = {".lock", ".lock-node-0-of-2", ".lock-node-1-of-2"}  # empty lock files, one per node
    assert {p.name for p in cache.iterdir() if p.name.startswith(".lock")} == locks
    assert same_files(cache, demo_cache[0]) == sorted(locks - {".lock"})

    (cache / "summary.json").unlink()
    merged = subprocess.run(features_cmd(small_demo, cache, tiny_dir, "--merge-summary"), env=env,
                            capture_output=True, text=True, timeout=600)
    assert merged.returncode == 0, merged.stderr[-2000:]
    assert "clips written: {'train': 4, 'val': 2} (0 new shards, 2 reused)" in merged.stdout
    assert (cache / "summary.json").read_bytes() == (demo_cache[0] / "summary.json").read_bytes()

    partial = tmp_path / "partial"
    shutil.copytree(cache / "train", partial / "train")
    with pytest.raises(CacheError, match=r"1 of 2 shards are not written yet: val/shard-00000.h5"):
        merge_summary(config(small_demo, partial, tiny_profile_cfg))
    assert not (partial / "summary.json").exists()
