"""The one `expotion` command: subcommands, the shared model/device options, train's pass-through, make-tiny."""
from pathlib import Path

import pytest

from expotion.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def test_subcommands_share_the_model_and_device_options():
    parser = build_parser()
    features = parser.parse_args(["features", "--manifest", "m.csv", "--cache", "c", "--device", "cuda:1",
                                  "--profile", "tiny", "--tiny-dir", "t", "--weights-dir", "w"])
    assert (features.device, features.profile, str(features.tiny_dir), str(features.weights_dir)) == ("cuda:1", "tiny", "t", "w")
    generate = parser.parse_args(["generate", "--video", "v.mp4", "--device", "cpu", "--profile", "tiny"])
    assert (generate.device, generate.profile) == ("cpu", "tiny")
    live = parser.parse_args(["live", "--camera", "0", "--out", "o.wav", "--device", "cpu", "--seed", "3"])
    assert (live.device, live.profile, live.seed, live.camera) == ("cpu", None, 3, 0)
    evaluation = parser.parse_args(["eval", "--generated", "g", "--reference", "r", "--out", "o", "--device", "cuda",
                                    "--weights-dir", "w"])
    assert (evaluation.device, str(evaluation.weights_dir)) == ("cuda", "w")
    caption = parser.parse_args(["caption", "--cache", "c", "--device", "cuda", "--weights-dir", "w"])
    assert (caption.device, str(caption.weights_dir), caption.captioner) == ("cuda", "w", "music")
    app = parser.parse_args(["app", "--device", "cpu", "--profile", "tiny", "--tiny-dir", "t"])
    assert (app.device, app.profile, str(app.tiny_dir)) == ("cpu", "tiny", "t")
    # generate and app take the profile the checkpoint records unless told; features defaults to the released weights
    assert parser.parse_args(["generate", "--video", "v.mp4"]).profile is None
    assert parser.parse_args(["app"]).tiny_dir is None
    assert parser.parse_args(["features", "--manifest", "m.csv", "--cache", "c"]).profile == "real"


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    for command in ("features", "caption", "train", "generate", "live", "eval", "weights", "cache", "app", "study"):
        assert f"\n    {command} " in printed
    assert "95% bootstrap" in printed  # a literal % in a subcommand's help


def test_train_hands_its_arguments_to_lightning_cli(capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "fit", "--config", str(ROOT / "lightning_configs" / "tiny_cpu.yaml"), "--data.batch_size=3",
              "--print_config"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert "batch_size: 3" in printed and "musicgen: cache/tiny-weights/musicgen_tiny" in printed


def test_make_tiny_writes_once_and_the_tiny_profile_needs_it(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,video,caption\na,a.mp4,x\n")
    args = ["features", "--manifest", str(manifest), "--cache", str(tmp_path / "c"), "--profile", "tiny",
            "--tiny-dir", str(tmp_path / "tiny"), "--device", "cpu"]
    assert main(args) == 2
    assert f"expotion weights make-tiny {tmp_path / 'tiny'}" in capsys.readouterr().err
    assert main(["weights", "make-tiny", str(tmp_path / "tiny"), "--models", "marlin,raft_small"]) == 0
    assert "written  marlin" in capsys.readouterr().out
    before = (tmp_path / "tiny" / "raft_small_tiny.pth").stat().st_mtime_ns
    assert main(["weights", "make-tiny", str(tmp_path / "tiny"), "--models", "raft_small"]) == 0
    assert "kept" in capsys.readouterr().out
    assert (tmp_path / "tiny" / "raft_small_tiny.pth").stat().st_mtime_ns == before
    assert main(["weights", "make-tiny", str(tmp_path / "tiny"), "--models", "nope"]) == 2
