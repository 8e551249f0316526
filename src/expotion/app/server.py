"""Serve the browser app: make music for a video or live for a webcam, and run a blinded listening study.

    expotion app [--profile tiny --musicgen DIR] [--runs runs] [--port 7860] [--max-upload-mb 100]
    expotion app --study study.yaml [--study-only]

Gradio is imported only when the app starts, so the rest of the command line stays fast.

What the server hands out is kept to what the page needs: Gradio serves its own cache (where it
copies every file a handler returns and every demo clip), plus the folders named here: the
generated files and the study's blinded trial media. The demo folder (its manifest and any other
files), the study file, its database and the systems' folders are never served. Uploads are
limited to ``--max-upload-mb``; a ``--study-only`` server, whose page has no upload widget,
refuses every upload.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from expotion.core import option_types as opt
from expotion.core.option_types import add_model_arguments

DEFAULT_MAX_UPLOAD_MB = 100.0  # about a minute of 1080p phone video; the Generate tab reads only what it needs


def upload_megabytes(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of megabytes, got {text}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 to serve a network)")
    p.add_argument("--port", type=opt.port, default=7860)
    p.add_argument("--runs", type=Path, default=Path("runs"), help="where the checkpoint list looks for exported checkpoints (e.g. adaptor.pt)")
    p.add_argument("--musicgen", help="hub name or local dir (default: each checkpoint's own)")
    p.add_argument("--demo-manifest", type=Path, default=Path("demo_data/manifest.csv"),
                   help="recordings offered as demo clips, if the file exists")
    p.add_argument("--outputs", type=Path, default=Path("outputs/app"), help="where generated files are written")
    p.add_argument("--study", type=Path, help="a study file: adds the listening-study tab")
    p.add_argument("--study-only", action="store_true",
                   help="serve the study tab alone (what participants should get: no model names on the page, "
                        "no uploads)")
    p.add_argument("--max-upload-mb", type=upload_megabytes, default=DEFAULT_MAX_UPLOAD_MB,
                   help="largest video the Generate tab accepts, in MB (default %(default)g); larger uploads are "
                        "refused before they are stored")
    add_model_arguments(p, from_checkpoint=True)


class RefuseUploads:
    """ASGI middleware for the participants' server: its page sends no files, so every upload
    (any multipart request, whatever its route) is refused before a byte is stored."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and is_upload(scope):
            from starlette.responses import PlainTextResponse

            await PlainTextResponse("this server accepts no uploads", status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def is_upload(scope: dict) -> bool:
    headers = dict(scope.get("headers") or [])
    return (headers.get(b"content-type", b"").lower().startswith(b"multipart/")
            or scope.get("path", "").rstrip("/").endswith("/upload"))


def launch_options(args: argparse.Namespace, study) -> dict:
    """``Blocks.launch`` keywords that limit what the server accepts and serves (see the module docstring)."""
    from starlette.middleware import Middleware

    allowed = [study.media_dir] if study else []
    if not args.study_only:
        allowed.append(args.outputs.resolve())
    blocked = [study.path, *(study.database.with_name(study.database.name + s) for s in ("", "-wal", "-shm",
                                                                                         "-journal"))] if study else []
    demo_dir = args.demo_manifest.resolve().parent
    # The demo clips reach the page as copies in Gradio's cache, so their folder is blocked; if it
    # holds a served folder (e.g. it is the working directory), only its manifest can be.
    demo_holds_served = any(p.resolve().is_relative_to(demo_dir) for p in allowed)
    blocked.append(args.demo_manifest.resolve() if demo_holds_served else demo_dir)
    options = {"allowed_paths": [str(p) for p in allowed], "blocked_paths": [str(p) for p in blocked]}
    if args.study_only:
        return {**options, "max_file_size": 0, "app_kwargs": {"middleware": [Middleware(RefuseUploads)]}}
    return {**options, "max_file_size": int(args.max_upload_mb * 1024 * 1024)}


def build_app(args: argparse.Namespace):
    """The Blocks for these options (not launched) and the ``launch`` keywords that limit uploads and files served.

    The study tab comes first when there is one.
    """
    import gradio as gr

    from expotion.app.generate_tab import ModelPlace, build_generate_tab
    from expotion.app.live_tab import build_live_tab
    from expotion.app.study import load_study
    from expotion.app.study_tab import StudyRunner, build_study_tab

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
                with gr.Tab("Live", id="live"):
                    build_live_tab(page, place, args.outputs)
    page.queue(default_concurrency_limit=1)  # one generation at a time on a CPU
    return page, launch_options(args, study)


def run(args: argparse.Namespace) -> int:
    from expotion.app.study import StudyError
    from expotion.app.study_store import DatabaseProblem

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests
    try:
        page, options = build_app(args)
    except (StudyError, DatabaseProblem) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        _, url, _ = page.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True, quiet=True,
                                footer_links=[], **options)
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
