"""The registry of video feature streams: each stream states its own facts where it is registered.

A :class:`Stream` says how its model loads and computes, and everything the other stages need to know about its
output: its rate (a function of :class:`~expotion.core.rates.Rates`, which keeps every number), whether it has one
vector per pair of consecutive frames, how far past a window's end its last vectors reach (long videos are
extracted window by window), when each vector is ready (the time of the last frame it reads, which a causal
model and live extraction go by), whether it reads the face track, the dtype it is stored in and its per-step shape.
Nothing outside the registration lists streams by name: precompute, the shards, long-video extraction and the
methods read these facts. The built-in streams register in :mod:`expotion.extractors.bank`; a new one is one
:func:`register_stream` call.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from expotion.core.rates import DEFAULT_RATES, Rates, StreamRate
from expotion.data.shards import StoredArray

MASK_SUFFIX = "_mask"  # a stream's validity mask is stored beside it as ``<name>_mask``, at its rate


@dataclass(frozen=True)
class Stream:
    """One video feature stream: the weights it reads, how to load them, its computation and its facts.

    ``load(path, device, cfg)`` returns the frozen model on ``device``; ``compute(extractors, model, clip,
    duration_s, face_box, out)`` adds the stream's arrays (and notes) for one clip to ``out``. A stream
    without weights (``weight_key`` None) gets an empty path; ``check(path)`` refuses an incomplete weights
    directory before any work starts. ``stepwise(extractors, model, faces)`` returns the same computation fed
    one sampled frame at a time (a :class:`~expotion.extractors.stepwise.SlidingWindows`), for live use.
    """

    name: str
    load: Callable  # (path, device, ExtractorConfig) -> nn.Module
    rate: Callable[[Rates], StreamRate]
    shape: Callable  # (model, ExtractorConfig) -> the shape of one time step
    compute: Callable[..., None]
    weight_key: Callable | None = None  # ExtractorConfig -> the registered WeightSpec (``expotion weights check``)
    path: Callable = lambda cfg: ""  # ExtractorConfig -> its weights' path
    check: Callable[[str], object] | None = None
    default: bool = False  # precompute extracts it unless told otherwise
    pairwise: bool = False  # one vector per pair of consecutive sampled frames (a flow), so one fewer than frames
    overlap: Callable[[Rates], float] = lambda rates: 0.0  # seconds a vector's input runs past the next one's start
    faces: bool = False  # reads the face track: its long-video windows also fall on the face detector's grid
    dtype: type = np.float16  # as stored in the shards: half the disk, ample precision for features
    matching: Callable[[Rates, StreamRate], Rates] | None = None  # the rates that reproduce a stored rate
    stepwise: Callable | None = None  # (extractors, model, faces) -> its computation as frames arrive (live)
    last_frame: Callable[[Rates, np.ndarray], np.ndarray] | None = None  # vector indices -> seconds of the last frame each reads

    def lookahead_s(self, rates: Rates) -> float:
        """Video past a window's end that the vectors starting inside it need (a flow needs the frame after it)."""
        return self.overlap(rates) + (1 / self.rate(rates).fps if self.pairwise else 0.0)

    def period(self, rates: Rates) -> Fraction:
        """Seconds between consecutive vectors (segment starts, when segmented), as an exact fraction."""
        rate = self.rate(rates)
        return Fraction(rate.segment_hop if rate.segment_len else 1 / rate.fps).limit_denominator(1000)

    def length(self, rate: StreamRate, seconds: float) -> int:
        """Vectors in ``seconds`` at ``rate``: its frames, one fewer for a pairwise stream."""
        frames = int(np.floor(seconds * rate.fps + 1e-6))
        return max(frames - 1, 0) if self.pairwise else frames


STREAMS: dict[str, Stream] = {}


def register_stream(stream: Stream) -> Stream:
    """Add ``stream`` (a second registration under one name replaces the first)."""
    STREAMS[stream.name] = stream
    return stream


def stream_of(array: str) -> Stream:
    """The stream an array of a clip belongs to (a mask belongs to its stream); KeyError for any other array."""
    return STREAMS[array] if array in STREAMS else STREAMS[array.removesuffix(MASK_SUFFIX)]


def default_streams() -> tuple[str, ...]:
    """The streams precompute extracts unless told otherwise, as they state at registration."""
    return tuple(name for name, stream in STREAMS.items() if stream.default)


def stream_rate(name: str, rates: Rates) -> StreamRate:
    """When the vectors of stream ``name`` happen at ``rates``; KeyError for a name no stream registered."""
    return STREAMS[name].rate(rates)


def rates_matching(rates: Rates, streams: dict[str, StreamRate]) -> Rates:
    """``rates`` adjusted so that each stream is extracted at the rate given for it (e.g. the Synchformer stride an
    adaptor was trained with), by the streams' own ``matching``.

    Raises ValueError naming the first stream these rates cannot reproduce.
    """
    for name, rate in streams.items():
        stream = STREAMS.get(name)
        if stream is not None and stream.matching is not None:
            rates = stream.matching(rates, rate)
    for name, rate in streams.items():
        if name not in STREAMS:
            raise ValueError(f"'{name}' features cannot be extracted by this version: no such stream is registered "
                             f"(known: {', '.join(STREAMS)})")
        if stream_rate(name, rates) != rate:
            raise ValueError(f"'{name}' features at {rate} cannot be extracted by this version, which "
                             f"writes them at {stream_rate(name, rates)}; rebuild the cache and retrain")
    return rates


def feature_ready_times(stream: str | Stream, count: int, rates: Rates = DEFAULT_RATES,
                        stored: StreamRate | None = None) -> torch.Tensor:
    """Seconds from the clip start at which each of ``count`` vectors of ``stream`` is ready: the time of the last
    frame it reads (a window's last frame, the second frame of a pair), as the stream states at registration.

    ``stored`` is the rate the vectors were written at (a cache's); the rates are first matched to it, so e.g. a
    Synchformer stride other than the default times its segments right. Float64, (count,).
    """
    stream = STREAMS[stream] if isinstance(stream, str) else stream
    if stream.last_frame is None:
        raise ValueError(f"the '{stream.name}' stream does not state when its vectors are ready (its registration "
                         "has no last_frame), so it cannot condition a causal model")
    if stored is not None:
        rates = rates_matching(rates, {stream.name: stored})
    return torch.from_numpy(np.asarray(stream.last_frame(rates, np.arange(count)), dtype=np.float64))


def stored_arrays(names: Iterable[str], rates: Rates) -> dict[str, StoredArray]:
    """How the shards store the arrays of streams ``names``: each stream's dtype and its rate's attributes (its
    mask as computed)."""
    return {name: StoredArray(STREAMS[name].dtype, STREAMS[name].rate(rates).to_attrs())
            for name in names if name in STREAMS}
