"""Every numeric option of the command line is range-checked while the command line is parsed, so a bad number is
refused in one line naming the flag and the valid range, before any model loads."""
import argparse

import pytest

from expotion.cli.main import build_parser
from expotion.cli.main import main as cli_main

GENERATE = ["generate", "--video", "v.mp4", "--out", "o.wav"]
GENERATE_BATCH = ["generate", "--cache", "c/val", "--out-dir", "o"]
EVAL = ["eval", "--generated", "g", "--reference", "r", "--out", "o"]
FEATURES = ["features", "--manifest", "m.csv", "--cache", "c"]
APP = ["app"]
STUDY = ["study", "results", "study.yaml"]
TINY = ["weights", "make-tiny", "d"]

SEED_RANGE = "must be an integer in [0, 2^63)"
AT_LEAST_1 = "must be at least 1"
POSITIVE = "must be greater than 0"

CASES = [  # (command, flag, bad value, what the message says)
    (GENERATE, "--seed", str(2**64), SEED_RANGE),
    (GENERATE, "--seed", str(2**63), SEED_RANGE),
    (GENERATE, "--seed", "-1", SEED_RANGE),
    (GENERATE, "--extend-stride", "0", POSITIVE),
    (GENERATE, "--extend-stride", "-5", POSITIVE),
    (GENERATE, "--extend-stride", "nan", "expected a finite number"),
    (GENERATE, "--top-k", "0", AT_LEAST_1),
    (GENERATE, "--cfg", "-1", "must be at least 0"),
    (GENERATE_BATCH, "--batch-size", "0", AT_LEAST_1),
    (GENERATE_BATCH, "--devices", "0", AT_LEAST_1),
    (GENERATE_BATCH, "--num-nodes", "-2", AT_LEAST_1),
    (GENERATE_BATCH, "--seed", str(2**64), SEED_RANGE),
    (EVAL, "--seed", str(2**64), SEED_RANGE),
    (EVAL, "--seed", "-3", SEED_RANGE),
    (EVAL, "--is-splits", "0", AT_LEAST_1),
    (EVAL, "--batch-size", "0", AT_LEAST_1),
    (EVAL, "--beat-trim", "-1", "must be at least 0"),
    (FEATURES, "--clip-seconds", "0", POSITIVE),
    (FEATURES, "--clip-seconds", "-10", POSITIVE),
    (FEATURES, "--recordings-per-shard", "0", AT_LEAST_1),
    (FEATURES, "--workers", "0", AT_LEAST_1),
    (FEATURES, "--threads", "0", AT_LEAST_1),
    (FEATURES, "--synchformer-stride", "0", AT_LEAST_1),
    (FEATURES, "--num-nodes", "0", AT_LEAST_1),
    (FEATURES, "--node-rank", "-1", "must be at least 0"),
    (APP, "--port", "0", "must be an integer in [1, 65536)"),
    (APP, "--port", "70000", "must be an integer in [1, 65536)"),
    (STUDY, "--resamples", "0", AT_LEAST_1),
    (STUDY, "--seed", str(2**64), SEED_RANGE),
    (TINY, "--seed", "-1", SEED_RANGE),
]


def subcommands() -> set[str]:
    parser = build_parser()
    return set(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices)


@pytest.mark.parametrize("command, flag, value, says", CASES, ids=[f"{c[0]}{f}={v}" for c, f, v, _ in CASES])
def test_out_of_range_numbers_are_refused_in_one_line_while_parsing(command, flag, value, says, capsys):
    if command[0] not in subcommands():
        pytest.skip(f"`expotion {command[0]}` is not part of this install (requirements/app.txt)")
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*command, f"{flag}={value}"])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("expotion ") and f"argument {flag}: {says}" in last


@pytest.mark.parametrize("command, flag, value", [(GENERATE, "--seed", str(2**63 - 1)), (GENERATE, "--seed", "0"),
                                                  (GENERATE, "--extend-stride", "0.5"), (EVAL, "--beat-trim", "0"),
                                                  (FEATURES, "--node-rank", "0")])
def test_values_at_the_edges_of_the_ranges_are_accepted(command, flag, value):
    parsed = getattr(build_parser().parse_args([*command, flag, value]), flag.lstrip("-").replace("-", "_"))
    assert parsed == (int(value) if isinstance(parsed, int) else float(value))


def test_a_huge_seed_is_refused_by_the_command_before_any_work(tmp_path, capsys):
    """The whole command, not just its parser: status 2 and one line, with no output written."""
    with pytest.raises(SystemExit) as exit_:
        cli_main(["generate", "--video", str(tmp_path / "v.mp4"), "--out", str(tmp_path / "o.wav"), "--prompt", "x",
                  "--seed", str(2**64)])
    assert exit_.value.code == 2
    assert "argument --seed: must be an integer in [0, 2^63)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_library_callers_get_the_same_seed_range():
    from expotion.core import option_types

    assert option_types.check_seed(2**63 - 1) == 2**63 - 1
    for bad in (2**63, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"\[0, 2\^63\)"):
            option_types.check_seed(bad)
