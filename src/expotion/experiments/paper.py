"""The paper's own Table 1 (Expotion, ISMIR 2025, arXiv 2507.04955), quoted as printed, for the reference block
of ``table1.md``. Columns in the paper's order, keyed as ``expotion eval`` keys its metrics."""
from __future__ import annotations

COLUMNS = ("fad_vgg", "kl", "is", "tempo_error", "beat_f1", "text_audio", "video_audio")

# (motion feature, prompt) -> the paper's seven numbers; "Syncformer" is the paper's spelling
ROWS: tuple[tuple[str, str, tuple[float, ...]], ...] = (
    ("face", "Generated", (2.52, 0.74, 1.45, 31.53, 0.38, 0.48, 0.55)),
    ("motion RAFT", "Generic", (3.56, 1.05, 1.16, 28.07, 0.37, 0.38, 0.65)),
    ("motion RAFT", "Generated", (2.25, 0.66, 1.53, 33.71, 0.37, 0.52, 0.59)),
    ("motion Syncformer", "Generic", (3.52, 1.08, 1.20, 31.03, 0.35, 0.37, 0.61)),
    ("motion Syncformer", "Generated", (1.93, 0.65, 1.57, 32.89, 0.36, 0.52, 0.61)),
    ("face+motion Syncformer", "Generated", (2.55, 0.67, 1.49, 32.72, 0.37, 0.54, 0.59)),
    ("MusicGen", "Generated", (2.76, 0.79, 1.54, 35.84, 0.33, 0.50, 0.42)),
    ("Video2Music", "", (18.97, 1.32, 1.01, 26.13, 0.38, 0.25, 0.59)),
    ("VidMuse", "", (9.91, 1.10, 1.33, 33.01, 0.37, 0.36, 0.52)),
)


def quoted_block() -> list[str]:
    """The paper's numbers as a Markdown table, marked as quoted."""
    from expotion.evaluation.metrics import SPEC_BY_KEY

    specs = [SPEC_BY_KEY[k] for k in COLUMNS]
    lines = ["## The paper's numbers (quoted from its Table 1)", "",
             "Quoted as printed in Table 1 of Expotion (ISMIR 2025, arXiv 2507.04955), on the authors' 7-hour "
             "dataset with their models: for comparison of trends, not computed here.", "",
             "| Motion feat. | Prompt | " + " | ".join(f"{s.label} {s.arrow}" for s in specs) + " |",
             "|---|---|" + "---|" * len(specs)]
    lines += [f"| {feature} | {prompt} | " + " | ".join(f"{v:.2f}" for v in values) + " |"
              for feature, prompt, values in ROWS]
    return lines
