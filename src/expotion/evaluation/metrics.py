"""Stage 2: the metrics, computed from the stage-1 cache alone.

Each metric reports a status: ``ok`` with a value; ``missing`` when a model's
weights or an input (captions, videos) is absent, with the reason; or
``failed`` when the data cannot give a value (say, too few VGGish frames).
A clip whose data is absent for one metric is left out of that metric only,
and listed with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from expotion.evaluation import alignment, checks, maths, rhythm
from expotion.evaluation.embed import Item, Store
from expotion.evaluation.files import Pairing
from expotion.evaluation.video import VideoClip

DEFAULT_IS_SPLITS = 10
DEFAULT_SEED = 0


@dataclass(frozen=True)
class MetricSpec:
    key: str
    label: str
    higher_is_better: bool
    group: str  # the ``--metrics`` name that selects it

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


# The paper's Table 1 order, then the other columns.
SPECS = (
    MetricSpec("fad_vgg", "FAD-VGG", False, "fad"),
    MetricSpec("kl", "KL", False, "kl"),
    MetricSpec("is", "IS", True, "is"),
    MetricSpec("tempo_error", "Tempo Err. (bpm)", False, "tempo"),
    MetricSpec("beat_f1", "Beat F1", True, "beat"),
    MetricSpec("text_audio", "Text–Audio", True, "text_audio"),
    MetricSpec("video_audio", "Video–Audio", True, "video_audio"),
    MetricSpec("kl_generated_reference", "KL(gen‖ref)", False, "kl"),
    MetricSpec("kl_both", "KL both", False, "kl"),
    MetricSpec("tempo_error_octave", "Tempo Err. octave (bpm)", False, "tempo"),
    MetricSpec("chroma", "Chroma", True, "chroma"),
    MetricSpec("av_align", "AV-Align", True, "video_music"),
    MetricSpec("bas_motion_music", "BAS motion→music", True, "video_music"),
    MetricSpec("bas_music_motion", "BAS music→motion", True, "video_music"),
    MetricSpec("motion_tempo_error", "Motion tempo err. (bpm)", False, "video_music"),
    MetricSpec("motion_tempo_error_octave", "Motion tempo err. octave (bpm)", False, "video_music"),
)
SPEC_BY_KEY = {s.key: s for s in SPECS}
GROUP_EXTRACTORS = {
    "fad": ("vggish",),
    "kl": ("passt",),
    "is": ("passt",),
    "tempo": ("beats",),
    "beat": ("beats",),
    "text_audio": ("clap_audio", "clap_text"),
    "video_audio": ("languagebind_audio", "languagebind_video"),
    "chroma": ("chroma",),
    "video_music": ("motion", "onsets", "beats"),
}
GROUPS = tuple(GROUP_EXTRACTORS)
ALWAYS = ("signal",)  # extractors every run needs: clip durations and levels, for the suspicious-clip checks
INPUT_FLAGS = {"caption": "--captions, or --cache", "video": "--videos, or --cache with the source videos"}
VIDEO_GROUPS = ("video_audio", "video_music")  # groups that need --videos
CONTROL_SHIFTS = 10  # wrong pairings per clip in the shuffled-pairs control


@dataclass
class MetricResult:
    key: str
    status: str  # "ok", "missing" or "failed"
    value: float | None = None
    reason: str = ""
    details: dict = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        spec = SPEC_BY_KEY[self.key]
        doc: dict = {"status": self.status, "value": self.value, "label": spec.label,
                     "better": "higher" if spec.higher_is_better else "lower"}
        if self.reason:
            doc["reason"] = self.reason
        doc.update(self.details)
        if self.excluded:
            doc["excluded_clips"] = self.excluded
        return doc


@dataclass
class Options:
    is_splits: int = DEFAULT_IS_SPLITS
    seed: int = DEFAULT_SEED
    beat_window_s: float = rhythm.BEAT_WINDOW_S
    beat_trim_s: float = rhythm.DEFAULT_TRIM_S


@dataclass
class Evaluation:
    """Everything stage 2 produced: set-level results, the reference-side scores, per-clip rows and the clips to flag."""

    results: dict[str, MetricResult]
    reference: dict[str, MetricResult]
    rows: dict[str, dict]
    suspicious: dict[str, list[str]] = field(default_factory=dict)  # clip id -> problems (kept in the metrics)
    excluded: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # clip id -> {reason: metric labels}
    controls: dict[str, dict[str, MetricResult]] = field(default_factory=dict)  # extra table row -> results
    clip_inputs: dict[str, alignment.ClipInputs] = field(default_factory=dict)  # clip id -> what its figure shows


class Gathered:
    """The cached outputs of one extractor for a set of clips, with the reasons for those absent."""

    def __init__(self, store: Store, extractor: str, items: dict[str, Item]) -> None:
        self.values: dict[str, dict[str, np.ndarray]] = {}
        self.absent: dict[str, str] = {}
        for clip_id, item in items.items():
            arrays = store.get(extractor, item)
            if arrays is None:
                self.absent[clip_id] = store.why_absent(extractor, item)
            else:
                self.values[clip_id] = arrays


def unavailable(key: str, store: Store, extractors: tuple[str, ...]) -> MetricResult | None:
    """A 'missing' (or 'failed') result when any of the extractors could not run at all, with each distinct reason once.

    Two extractors of one checkpoint (CLAP's audio and text sides) fail for the same reason; it is given once.
    """
    down = [store.states[n] for n in extractors if n in store.states and store.states[n].status != "ready"]
    if not down:
        return None
    status = "failed" if any(s.status == "failed" for s in down) else "missing"
    return MetricResult(key, status, reason=" ".join(dict.fromkeys(s.reason for s in down)))


def mean_result(key: str, per_clip: dict[str, float], excluded: dict[str, str], what: str) -> MetricResult:
    """The mean of finite per-clip values; clips with NaN are listed as excluded."""
    finite = {k: v for k, v in per_clip.items() if np.isfinite(v)}
    for k in per_clip.keys() - finite.keys():
        excluded[k] = f"{what} undefined for this clip"
    if not finite:
        return MetricResult(key, "failed", reason=f"no clip has a defined {what}", excluded=excluded)
    values = np.array(list(finite.values()))
    return MetricResult(key, "ok", float(values.mean()), details={"std": float(values.std()), "n_clips": len(values)},
                        excluded=excluded)


def clip_probabilities(logits: np.ndarray) -> np.ndarray:
    """A clip's label distribution: the softmax of each chunk's logits, averaged over chunks."""
    return maths.softmax(logits, axis=-1).mean(axis=0)


class Evaluator:
    def __init__(self, pairing: Pairing, store: Store, videos: dict[str, VideoClip], captions: dict[str, str],
                 options: Options, rows: dict[str, dict]) -> None:
        self.pairing, self.store, self.videos, self.captions = pairing, store, videos, captions
        self.options, self.rows = options, rows
        self.clip_inputs: dict[str, alignment.ClipInputs] = {}

    def both(self, extractor: str) -> tuple[dict[str, dict], dict[str, dict], dict[str, str]]:
        """Outputs for generated and reference audio of the clips that have both; reasons for the rest."""
        gen = Gathered(self.store, extractor, dict(self.pairing.generated))
        ref = Gathered(self.store, extractor, dict(self.pairing.reference))
        excluded = {k: f"generated: {v}" for k, v in gen.absent.items()}
        excluded.update({k: f"reference: {v}" for k, v in ref.absent.items() if k not in excluded})
        ids = [i for i in self.pairing.ids if i in gen.values and i in ref.values]
        return {i: gen.values[i] for i in ids}, {i: ref.values[i] for i in ids}, excluded

    def fad(self) -> list[MetricResult]:
        if (res := unavailable("fad_vgg", self.store, ("vggish",))) is not None:
            return [res]
        gen, ref, excluded = self.both("vggish")
        for i in gen:
            self.rows[i]["vggish_frames_generated"] = len(gen[i]["embeddings"])
            self.rows[i]["vggish_frames_reference"] = len(ref[i]["embeddings"])
        g = np.concatenate([gen[i]["embeddings"] for i in gen]) if gen else np.zeros((0, 0))
        r = np.concatenate([ref[i]["embeddings"] for i in ref]) if ref else np.zeros((0, 0))
        details = {"n_clips": len(gen), "n_frames_generated": len(g), "n_frames_reference": len(r)}
        if len(g) < 2 or len(r) < 2:
            return [MetricResult("fad_vgg", "failed", reason="FAD needs at least 2 VGGish frames (0.96 s each) per side",
                                 details=details, excluded=excluded)]
        value = maths.frechet_distance(*maths.gaussian_statistics(g), *maths.gaussian_statistics(r))
        dim = g.shape[1]
        if min(len(g), len(r)) <= dim:
            details["note"] = f"fewer frames than embedding dimensions ({dim}): the covariances are rank-deficient"
        return [MetricResult("fad_vgg", "ok", value, details=details, excluded=excluded)]

    def kl(self) -> list[MetricResult]:
        keys = ("kl", "kl_generated_reference", "kl_both")
        if (res := unavailable("kl", self.store, ("passt",))) is not None:
            return [MetricResult(k, res.status, reason=res.reason) for k in keys]
        gen, ref, excluded = self.both("passt")
        per_clip: dict[str, dict[str, float]] = {k: {} for k in keys}
        for i in gen:
            p_gen, p_ref = clip_probabilities(gen[i]["logits"]), clip_probabilities(ref[i]["logits"])
            rg, gr = float(maths.kl_divergence(p_ref, p_gen)), float(maths.kl_divergence(p_gen, p_ref))
            for key, value in zip(keys, (rg, gr, rg + gr), strict=True):
                per_clip[key][i] = value
                self.rows[i][key] = value
        return [mean_result(k, per_clip[k], dict(excluded), "KL") for k in keys]

    def inception(self, side: str) -> MetricResult:
        if (res := unavailable("is", self.store, ("passt",))) is not None:
            return res
        items = self.pairing.generated if side == "generated" else self.pairing.reference
        got = Gathered(self.store, "passt", dict(items))
        if not got.values:
            return MetricResult("is", "failed", reason="no clip has PaSST outputs", excluded=got.absent)
        probs = np.stack([clip_probabilities(got.values[i]["logits"]) for i in sorted(got.values)])
        splits = min(self.options.is_splits, len(probs))
        mean, std = maths.inception_score(probs, splits, self.options.seed)
        return MetricResult("is", "ok", mean, details={"std": std, "n_splits": splits, "n_clips": len(probs),
                                                       "seed": self.options.seed}, excluded=got.absent)

    def rhythm(self, groups: set[str]) -> list[MetricResult]:
        keys = [k for k, g in (("tempo_error", "tempo"), ("tempo_error_octave", "tempo"), ("beat_f1", "beat")) if g in groups]
        if (res := unavailable("beats", self.store, ("beats",))) is not None:
            return [MetricResult(k, res.status, reason=res.reason) for k in keys]
        gen, ref, excluded = self.both("beats")
        per_clip: dict[str, dict[str, float]] = {k: {} for k in keys}
        for i in gen:
            bg, br = gen[i]["beats"], ref[i]["beats"]
            tg, tr = rhythm.tempo_from_beats(bg), rhythm.tempo_from_beats(br)
            self.rows[i].update(n_beats_generated=len(bg), n_beats_reference=len(br), tempo_generated=tg, tempo_reference=tr)
            values = {
                "tempo_error": rhythm.tempo_error(tg, tr),
                "tempo_error_octave": rhythm.octave_tempo_error(tg, tr),
                "beat_f1": rhythm.beat_f1(br, bg, self.options.beat_window_s, self.options.beat_trim_s),
            }
            for k in keys:
                per_clip[k][i] = values[k]
                self.rows[i][k] = values[k]
        undefined = {"tempo_error": "tempo (fewer than 2 beats)", "tempo_error_octave": "tempo (fewer than 2 beats)",
                     "beat_f1": "beat F1"}
        return [mean_result(k, per_clip[k], dict(excluded), undefined[k]) for k in keys]

    def similarity(self, key: str, side: str, audio_extractor: str, other_extractor: str,
                   others: dict[str, VideoClip | str], what: str) -> MetricResult:
        """Mean cosine between each clip's audio embedding and its caption or video embedding."""
        if not others:
            return MetricResult(key, "missing", reason=f"no {what} given ({INPUT_FLAGS[what]})")
        if (res := unavailable(key, self.store, (audio_extractor, other_extractor))) is not None:
            return res
        items = self.pairing.generated if side == "generated" else self.pairing.reference
        audio = Gathered(self.store, audio_extractor, {i: items[i] for i in self.pairing.ids if i in others})
        other = Gathered(self.store, other_extractor, {i: others[i] for i in self.pairing.ids if i in others})
        excluded = {i: f"no {what} for this clip" for i in self.pairing.ids if i not in others}
        excluded.update(audio.absent)
        excluded.update(other.absent)
        column = key if side == "generated" else f"{key}_reference"
        per_clip = {}
        for i in self.pairing.ids:
            if i in audio.values and i in other.values:
                per_clip[i] = float(maths.cosine_similarity(audio.values[i]["embedding"], other.values[i]["embedding"]))
                self.rows[i][column] = per_clip[i]
        return mean_result(key, per_clip, excluded, "similarity")

    def chroma(self) -> MetricResult:
        if (res := unavailable("chroma", self.store, ("chroma",))) is not None:
            return res
        gen, ref, excluded = self.both("chroma")
        per_clip = {}
        for i in gen:
            per_clip[i] = maths.chroma_cosine(gen[i]["chroma"], ref[i]["chroma"])
            self.rows[i]["chroma"] = per_clip[i]
        return mean_result("chroma", per_clip, excluded, "chroma similarity (silent clip)")

    def video_music(self) -> tuple[list[MetricResult], list[MetricResult], dict[str, list[MetricResult]]]:
        """AV-Align, beat alignment and motion tempo of generated and reference audio against each clip's video,
        and the shuffled-pairs control: the same scores with each audio against other clips' videos."""
        keys = alignment.KEYS
        if not self.videos:
            missing = [MetricResult(k, "missing", reason=f"no video given ({INPUT_FLAGS['video']})") for k in keys]
            return missing, list(missing), {}
        if (res := unavailable("video_music", self.store, GROUP_EXTRACTORS["video_music"])) is not None:
            down = [MetricResult(k, res.status, reason=res.reason) for k in keys]
            return down, list(down), {}
        motion = Gathered(self.store, "motion", {i: self.videos[i] for i in self.pairing.ids if i in self.videos})
        excluded = {i: "no video for this clip" for i in self.pairing.ids if i not in self.videos} | motion.absent
        sides = {"generated": self.pairing.generated, "reference": self.pairing.reference}
        music: dict[str, dict[str, alignment.Music]] = {}
        for side, items in sides.items():
            onsets, beats = Gathered(self.store, "onsets", dict(items)), Gathered(self.store, "beats", dict(items))
            excluded |= {i: f"{side}: {why}" for i, why in (onsets.absent | beats.absent).items()}
            music[side] = {i: alignment.Music.from_arrays(onsets.values[i], beats.values[i]["beats"])
                           for i in onsets.values if i in beats.values}
        ids = [i for i in self.pairing.ids if i in motion.values and all(i in m for m in music.values())]
        clips = {i: alignment.ClipInputs(alignment.Motion.from_arrays(motion.values[i]),
                                         {side: music[side][i] for side in sides}) for i in ids}
        self.clip_inputs = clips
        wrong_pairs = alignment.shifted_pairs(len(ids), CONTROL_SHIFTS, self.options.seed)
        results: dict[str, list[MetricResult]] = {}
        controls: dict[str, list[MetricResult]] = {}
        for side in sides:
            scored = alignment.score_pairs({i: (clips[i].motion, clips[i].music[side]) for i in ids})
            self.alignment_rows(scored, "" if side == "generated" else "_reference")
            failed = {i: f"{side}: {why}" for i, why in scored.failed.items()}
            results[side] = [alignment_mean(k, scored, excluded | failed) for k in keys]
            control = alignment.score_pairs({f"{ids[a]} with the video of {ids[v]}": (clips[ids[v]].motion,
                                                                                      clips[ids[a]].music[side])
                                             for a, v in wrong_pairs})
            controls[f"shuffled pairs, {side}"] = (
                [alignment_mean(k, control, dict(control.failed)) for k in keys] if wrong_pairs else
                [MetricResult(k, "failed", reason="the shuffled-pairs control needs at least 2 clips with videos")
                 for k in keys])
        return results["generated"], results["reference"], controls

    def alignment_rows(self, scored: alignment.PairScores, suffix: str) -> None:
        for i, clip in scored.clips.items():
            self.rows[i].update({f"{k}{suffix}": v for k, v in clip.values.items()})
            self.rows[i].update({"motion_tempo": clip.motion_tempo, f"music_tempo{suffix}": clip.music_tempo})
            if clip.notes:
                self.rows[i]["alignment_notes"] = "; ".join(clip.notes)
        for i, why in scored.failed.items():
            self.rows[i][f"alignment_failed{suffix}"] = why


def alignment_mean(key: str, scored: alignment.PairScores, excluded: dict[str, str]) -> MetricResult:
    """The mean over scored pairs, with the count of pairs, and any per-pair notes (such as a duration mismatch)."""
    result = mean_result(key, scored.values[key], excluded, alignment.UNDEFINED[key])
    notes = {name: "; ".join(clip.notes) for name, clip in scored.clips.items() if clip.notes}
    if notes:
        result.details["notes"] = notes
    return result


def evaluate(pairing: Pairing, store: Store, groups: set[str], videos: dict[str, VideoClip], captions: dict[str, str],
             options: Options) -> Evaluation:
    """All requested metrics for the generated set, the reference-side single-set scores, and per-clip rows."""
    rows = {i: {"clip_id": i, "generated": str(pairing.generated[i]), "reference": str(pairing.reference[i]),
                "video": str(videos[i]) if i in videos else "", "caption": captions.get(i, "")} for i in pairing.ids}
    ev = Evaluator(pairing, store, videos, captions, options, rows)
    found: list[MetricResult] = []
    reference: list[MetricResult] = []
    if "fad" in groups:
        found += ev.fad()
    if "kl" in groups:
        found += ev.kl()
    if "is" in groups:
        found.append(ev.inception("generated"))
        reference.append(ev.inception("reference"))
    if groups & {"tempo", "beat"}:
        found += ev.rhythm(groups)
    for side, target in (("generated", found), ("reference", reference)):
        if "text_audio" in groups:
            target.append(ev.similarity("text_audio", side, "clap_audio", "clap_text", dict(captions), "caption"))
        if "video_audio" in groups:
            target.append(ev.similarity("video_audio", side, "languagebind_audio", "languagebind_video", dict(videos),
                                        "video"))
    if "chroma" in groups:
        found.append(ev.chroma())
    controls: dict[str, list[MetricResult]] = {}
    if "video_music" in groups:
        generated_side, reference_side, controls = ev.video_music()
        found += generated_side
        reference += reference_side
    order = {s.key: n for n, s in enumerate(SPECS)}
    results = {r.key: r for r in sorted(found, key=lambda r: order[r.key])}
    reference_results = {r.key: r for r in sorted(reference, key=lambda r: order[r.key])}
    return Evaluation(results=results, reference=reference_results, rows=rows,
                      suspicious=checks.suspicious(pairing, store, rows),
                      excluded=checks.excluded(results, reference_results, {s.key: s.label for s in SPECS}),
                      controls={label: {r.key: r for r in rs} for label, rs in controls.items()},
                      clip_inputs=ev.clip_inputs)
