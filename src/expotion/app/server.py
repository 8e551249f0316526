"""Serve the browser app: make music for a video, and run a blinded listening study.

    expotion app [--profile tiny --musicgen DIR] [--runs runs] [--port 7860]
    expotion app --study study.yaml [--study-only]

Gradio is imported only when the app starts, so the rest of the command line stays fast.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..cli import add_model_arguments
from .. import option_types as opt


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 to serve a network)")
    p.add_argument("--port", type=opt.port, default=7860)
    p.add_argument("--runs", type=Path, default=Path("runs"), help="where the checkpoint list looks for adaptor.pt")
    p.add_argument("--musicgen", help="hub name or local dir (default: each checkpoint's own)")
    p.add_argument("--demo-manifest", type=Path, default=Path("demo_data/manifest.csv"),
                   help="recordings offered as demo clips, if the file exists")
    p.add_argument("--outputs", type=Path, default=Path("outputs/app"), help="where generated files are written")
    p.add_argument("--study", type=Path, help="a study file: adds the listening-study tab")
    p.add_argument("--study-only", action="store_true",
                   help="serve the study tab alone (what participants should get: no model names on the page)")
    add_model_arguments(p, from_checkpoint=True)


def build_app(args: argparse.Namespace):
    """The Blocks for these options (not launched) and the directories it serves files from.

    The study tab comes first when there is one.
    """
    import gradio as gr

    from .generate_tab import ModelPlace, build_generate_tab
    from .study import load_study
    from .study_tab import StudyRunner, build_study_tab

    study = load_study(args.study) if args.study else None
    if args.study_only and study is None:
        raise SystemExit("--study-only needs --study study.yaml")
    args.outputs.mkdir(parents=True, exist_ok=True)
    place = ModelPlace(args.runs, args.musicgen, args.profile, args.tiny_dir, args.weights_dir, args.device)
    with gr.Blocks(title=study.title if study else "Expotion: music for a video") as page:
        if study is None:
            gr.Markdown("# Expotion\nMusic for a video of a person's face and upper-body motion, plus a text prompt.")
        with gr.Tabs():
            if study is not None:
                with gr.Tab("Study", id="study"):
                    build_study_tab(StudyRunner(study), page)
            if not args.study_only:
                with gr.Tab("Generate", id="generate"):
                    build_generate_tab(page, place, args.outputs, args.demo_manifest)
    page.queue(default_concurrency_limit=1)  # one generation at a time on a CPU
    served = [args.outputs.resolve(), *([study.media_dir] if study else []),
              *([args.demo_manifest.resolve().parent] if args.demo_manifest.is_file() else [])]
    return page, [str(p) for p in served]


def run(args: argparse.Namespace) -> int:
    from .study import StudyError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests
    try:
        page, served = build_app(args)
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        _, url, _ = page.launch(server_name=args.host, server_port=args.port, allowed_paths=served,
                                prevent_thread_lock=True, quiet=True, footer_links=[])
    except OSError as err:
        print(f"error: cannot serve on {args.host}:{args.port} ({err}); is another server using the port? "
              "Choose another with --port", file=sys.stderr)
        return 2
    print(f"expotion app: open {url} in a browser (Ctrl+C to stop)", flush=True)
    try:
        page.block_thread()
    except KeyboardInterrupt:
        pass
    return 0
