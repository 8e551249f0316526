import numpy as np
import pytest

from expotion.core.rates import DEFAULT_RATES, Rates, StreamRate, sample_indices
from expotion.extractors.bank import rates_matching


@pytest.mark.parametrize(
    "duration, codes, marlin, synch_segments, raft",
    [
        (10.0, 500, 50, 30, 49),  # the paper's clip: 800 frames at 80 fps, 250 at 25 fps, 50 at 5 fps
        (2.0, 100, 10, 5, 9),
        (3.0, 150, 15, 8, 14),
        (0.5, 25, 2, 0, 1),
    ],
)
def test_lengths_for_clip_duration(duration, codes, marlin, synch_segments, raft):
    r = DEFAULT_RATES
    assert r.codes_frames(duration) == codes
    assert r.marlin_windows(duration) == marlin
    assert r.synchformer_segments(duration) == synch_segments
    assert r.synchformer_tokens(duration) == 8 * synch_segments
    assert r.raft_flows(duration) == raft
    assert r.audio_samples(duration) == int(duration * 32000)


def test_stream_rates_match_the_paper():
    r = DEFAULT_RATES
    assert r.marlin.fps == 5.0 and r.marlin.t0 == pytest.approx(0.1)  # centre of a 16-frame window at 80 fps
    # Synchformer: a 2-frame tubelet every 0.08 s inside 16-frame segments starting every 8 frames (0.32 s)
    assert r.synchformer == StreamRate(12.5, pytest.approx(0.04), 8, pytest.approx(0.32))
    assert r.raft.fps == 5.0 and r.raft.t0 == pytest.approx(0.1)
    assert r.codes.fps == 50.0
    # 10 s of MARLIN windows cover exactly the clip
    assert r.marlin_windows(10.0) / r.marlin.fps == pytest.approx(10.0)


def test_windows_counts_only_complete_windows():
    assert Rates.windows(15, 16, 8) == 0
    assert Rates.windows(16, 16, 8) == 1
    assert Rates.windows(23, 16, 8) == 1
    assert Rates.windows(24, 16, 8) == 2


def test_frames_at_is_robust_to_float_error():
    assert Rates.frames_at(0.3 * 3, 10) == 9  # 0.8999999999999999 * 10 must count 9 frames


def test_sample_indices_constant_rate_upsampling_holds_frames():
    ts = np.arange(30) / 30.0  # 1 s at 30 fps
    idx = sample_indices(ts, 80.0, 80)
    assert idx[0] == 0 and idx[-1] == 29
    assert np.all(np.diff(idx) >= 0)
    # each output frame shows the last source frame not after its time
    assert np.all(ts[idx] <= np.arange(80) / 80 + 1e-6)
    assert np.all(np.arange(80) / 80 - ts[idx] < 1 / 30 + 1e-6)


def test_sample_indices_follow_timestamps_for_variable_rate():
    ts = np.array([0.0, 0.04, 0.08, 0.5, 0.54, 1.0])  # a 0.42 s gap
    idx = sample_indices(ts, 10.0, 10)
    assert list(idx) == [0, 2, 2, 2, 2, 3, 4, 4, 4, 4]


def test_sample_indices_start_offset():
    ts = np.arange(100) / 25.0
    assert list(sample_indices(ts, 5.0, 3, start_s=2.0)) == [50, 55, 60]


def test_check_shape_names_the_stream():
    from expotion.core.rates import FeatureShapeError, check_shape

    check_shape("codes", (100,), (100,), 2.0)
    with pytest.raises(FeatureShapeError, match=r"^codes: output shape \(75,\) for a 2 s clip, expected \(100,\)$"):
        check_shape("codes", (75,), (100,), 2.0)


def test_config_checks_are_exceptions_not_asserts():
    """`python -O` strips asserts; a flow CNN width that is not a multiple of 16 must still be refused."""
    import subprocess
    import sys

    code = "from expotion.methods.expotion.embedding import FlowEmbedding; FlowEmbedding(8, out_dim=100)"
    result = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "ValueError: flow_dim must be a multiple of 16 (channels pooled to 4x4), got 100" in result.stderr


@pytest.mark.parametrize("stride", [8, 5, 16])
def test_synchformer_tokens_at_their_true_times(stride):
    """Token j of segment k covers frames stride*k + 2j and stride*k + 2j + 1 at 25 fps."""
    r = Rates(synchformer_stride=stride)
    n = r.synchformer_tokens(10.0)
    expected = [(stride * k + 2 * j + 1) / 25 for k in range(n // 8) for j in range(8)]
    assert r.synchformer.times(n) == pytest.approx(expected, abs=1e-9)
    instants, owner = r.synchformer.instants(n)
    assert instants == pytest.approx(sorted(set(round(t, 9) for t in expected)), abs=1e-9)
    assert instants[owner] == pytest.approx(expected, abs=1e-9)


def test_stride_8_tokens_pair_up_on_a_12_5_hz_grid():
    rate = DEFAULT_RATES.synchformer
    instants, owner = rate.instants(240)  # 10 s: 30 segments
    assert len(instants) == 4 * 30 + 4 and np.allclose(np.diff(instants), 0.08)
    counts = np.bincount(owner)
    assert counts[:4].tolist() == [1] * 4 and counts[-4:].tolist() == [1] * 4 and set(counts[4:-4]) == {2}
    assert rate.end(240) == pytest.approx(9.92)  # the last segment ends at frame 248


def test_stream_rate_attrs_round_trip():
    for rate in (DEFAULT_RATES.marlin, DEFAULT_RATES.synchformer, Rates(synchformer_stride=5).synchformer):
        assert StreamRate.from_attrs(rate.to_attrs()) == rate
    assert set(DEFAULT_RATES.marlin.to_attrs()) == {"fps", "t0"}


def test_rates_matching_a_checkpoint_take_its_stride():
    paper = Rates(synchformer_stride=5)
    streams = {"marlin": paper.marlin, "synchformer": paper.synchformer}
    assert rates_matching(DEFAULT_RATES, streams).synchformer_stride == 5
    assert rates_matching(DEFAULT_RATES, {"marlin": paper.marlin}) == DEFAULT_RATES
    old_reading = StreamRate(25.0, 0.04)  # the flattened tokens read as one uniform stream
    with pytest.raises(ValueError, match="'synchformer' features at .* cannot be extracted"):
        rates_matching(DEFAULT_RATES, {"synchformer": old_reading})
