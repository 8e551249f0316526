"""Known, harmless warnings of our dependencies are silenced at the entry points, and nothing else is."""
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import torch
from conftest import moving_frames, write_video

from expotion.core.known_warnings import LOG_FILTERS, silence_known_warnings

KNOWN = ("WARNING[XFORMERS]", "torch.nn.utils.weight_norm", "LeafSpec", "Tip: For seamless",
         "LightningCLI's args parameter")
CONFIG = Path(__file__).resolve().parents[1] / "lightning_configs" / "tiny_cpu.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def caught_warnings(action) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_warnings()
        action()
    return [str(w.message) for w in caught]


def test_filters_drop_the_known_messages_and_keep_others():
    assert caught_warnings(lambda: torch.nn.utils.weight_norm(torch.nn.Linear(2, 2))) == []
    assert caught_warnings(lambda: torch.utils._pytree.LeafSpec()) == []
    assert caught_warnings(lambda: warnings.warn("something else is deprecated", FutureWarning)) == [
        "something else is deprecated"]
    logger = logging.getLogger("xformers")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        silence_known_warnings()
        logger.warning("WARNING[XFORMERS]: xFormers can't load C++/CUDA extensions. xFormers was built for: ...")
        logger.warning("xformers: a different problem")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["xformers: a different problem"]
    assert set(LOG_FILTERS) == {"xformers", "lightning.pytorch.utilities.rank_zero"}


def test_a_generate_command_prints_none_of_the_known_warnings(tmp_path, tiny_profile_cfg):
    """The whole `expotion generate` path in a fresh process: imports, model building, generation."""
    video = write_video(tmp_path / "v.mp4", moving_frames(25, 64, 80), fps=25)
    proc = subprocess.run([sys.executable, "-m", "expotion.cli.main", "generate", "--video", str(video), "--prompt", "pop",
                           "--musicgen", tiny_profile_cfg.musicgen, "--profile", "tiny", "--tiny-dir", tiny_profile_cfg.weights_dir,
                           "--top-k", "20",
                           "--out", str(tmp_path / "o.wav")], capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for message in KNOWN:
        assert message not in proc.stderr, proc.stderr[-3000:]
    assert "New pattern" not in proc.stderr  # nor library chatter below warning level
    assert "music:" in proc.stderr  # progress still reaches the user


def test_a_train_command_prints_none_of_the_known_warnings():
    """`expotion train` passes LightningCLI the arguments after `train`, which Lightning warns about by default."""
    proc = subprocess.run([sys.executable, "-m", "expotion.cli.main", "train", "fit", "--config", str(CONFIG),
                           "--print_config"],
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "model:" in proc.stdout and "trainer:" in proc.stdout
    for message in KNOWN:
        assert message not in proc.stderr, proc.stderr[-3000:]
