"""Methods are plug-ins: a third method, defined and registered in this file alone, runs through the public commands.

The toy method mean-pools one cached motion stream (Synchformer's tokens) over the clip, projects it to MusicGen's
width and adds it to every text token of MusicGen's cross-attention memory (the ``description`` condition). It
supplies what every method supplies: a conditioning module generation reaches through ``generation_context``, a
:class:`~expotion.solvers.module.MethodModule` subclass, an export and a loader in the shared checkpoint envelope, and
its registration. Then ``expotion features``, ``expotion train`` (2 steps), ``expotion generate --cache`` and
``expotion eval`` run on it, in-process.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from expotion.cli.main import main as cli_main
from expotion.data.clips import ClipDataset, FeatureSpec, read_clips
from expotion.inference import ModelSettings, load_models
from expotion.methods.registry import METHODS, Method, register_method
from expotion.musicgen.loading import model_signature
from expotion.musicgen.objective import ObjectiveConfig
from expotion.musicgen.text import TEXT_KEY, dropped_captions, text_embeddings
from expotion.musicgen.windows import generate_tokens
from expotion.solvers.export import check_compatible, check_method, read_adaptor, spec_from_dict, write_checkpoint
from expotion.solvers.module import MethodModule
from expotion.solvers.optimization import Optimization

NAME = "toy_motion"
STREAM = "synchformer"
SEED = 7


class MotionMemory(nn.Module):
    """The clip's mean motion vector, projected to MusicGen's width, added to each (unmasked) text token."""

    reads_text = True
    lookahead_s = None  # the clip's mean motion: every step hears the whole window

    def __init__(self, in_dim: int, width: int, window_s: float, init_seed: int = 0):
        super().__init__()
        self.window_s = window_s
        self.proj = nn.Linear(in_dim, width)
        generator = torch.Generator().manual_seed(init_seed)  # known initial weights, to show that training moved them
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(width, in_dim, generator=generator) / math.sqrt(in_dim))
            self.proj.bias.zero_()

    def motion(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, width): the stream averaged over time (and any inner axes flattened)."""
        return self.proj(feats[STREAM].flatten(2).mean(dim=1))

    def added(self, embeds: torch.Tensor, mask: torch.Tensor, motion: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``embeds`` (B, L, width) with ``motion`` on the tokens of ``mask`` in the rows ``keep`` says."""
        where = (mask * keep.to(mask.device)[:, None].to(mask.dtype)).unsqueeze(-1).to(embeds.dtype)
        return embeds + motion[:, None, :].to(embeds.dtype) * where

    @contextlib.contextmanager
    def generation_context(self, musicgen, feats, rates, start_s, max_gen_len, compute_dtype) -> Iterator[None]:
        """For one ``lm.generate`` call: the motion joins the conditional rows' text memory (never the null rows)."""
        motion = self.motion(feats)

        def hook(_module, _args, output: dict) -> dict:
            embeds, mask = output[TEXT_KEY]
            rows = torch.arange(embeds.shape[0], device=embeds.device)
            doubled = motion.repeat(embeds.shape[0] // len(motion), 1)
            return {**output, TEXT_KEY: (self.added(embeds, mask, doubled, rows < len(motion)), mask)}

        handle = musicgen.lm.condition_provider.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()


def stream_width(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


class ToyModule(MethodModule):
    """The toy's training: MusicGen frozen, only the projection trains."""

    conditioning_name = "toy"

    def __init__(self, musicgen: str, optim: Optimization = Optimization(lr=0.05), zero_visual: bool = False,
                 objective: ObjectiveConfig = ObjectiveConfig()):
        super().__init__(musicgen, optim, zero_visual, objective)

    @property
    def streams(self) -> tuple[str, ...]:
        return (STREAM,)

    def build_conditioning(self, dataset: ClipDataset) -> MotionMemory:
        return MotionMemory(stream_width(dataset.spec.shapes[STREAM]), self.signature["dim"], dataset.crop_seconds)

    def predictions(self, feats: dict[str, torch.Tensor], batch: dict):
        keep = torch.tensor([not dropped for dropped in dropped_captions(self.lm, batch["caption"])])
        embeds, mask = text_embeddings(self.lm, batch["text"], batch["text_mask"], keep)
        memory = self.toy.added(embeds, mask, self.toy.motion(feats), keep)
        return self.lm.compute_predictions(batch["codes"], [], condition_tensors={TEXT_KEY: (memory, mask)})

    def trained_parameters(self) -> dict[str, nn.Parameter]:
        return {f"toy.{name}": p for name, p in self.toy.named_parameters()}

    def export(self, path: str | os.PathLike) -> None:
        write_checkpoint(path, NAME, {"window_s": self.toy.window_s}, self.signature, self.spec, self.toy.state_dict())


def load_toy(path: Path, payload: dict, musicgen) -> tuple[MotionMemory, FeatureSpec]:
    """The toy's conditioning from its export, checked against the MusicGen it is loaded onto."""
    check_method(path, payload, NAME, "of the toy method")
    signature = model_signature(musicgen)
    check_compatible(path, payload, signature, None)
    spec = spec_from_dict(payload["features"])
    toy = MotionMemory(stream_width(spec.shapes[STREAM]), signature["dim"], payload["config"]["window_s"])
    toy.load_state_dict(payload["state_dict"], strict=True)
    return toy, spec


TOY = register_method(Method(NAME, "Toy motion memory", module=f"{__name__}.ToyModule", export_name="toy_motion.pt",
                             weight_prefix="toy.", load=load_toy))
ToyModule.method = TOY


@pytest.fixture(scope="module", autouse=True)
def toy_registered() -> Iterator[None]:
    """The toy stays registered for this file's tests only."""
    yield
    METHODS.pop(NAME, None)


def generated(out_dir: Path) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in sorted(out_dir.glob("*.wav"))}


def test_a_method_registered_from_a_test_file_runs_through_the_public_commands(small_demo, tiny_profile_cfg, tmp_path):
    tiny_dir = str(Path(tiny_profile_cfg.marlin_path).parent)
    models = ["--profile", "tiny", "--tiny-dir", tiny_dir]
    cache = tmp_path / "cache"
    assert cli_main(["features", "--manifest", str(small_demo), "--cache", str(cache), "--clip-seconds", "2",
                     "--extractors", f"{STREAM},codes,t5", *models]) == 0

    run = tmp_path / "run"
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump({
        "seed_everything": 0,
        "model": {"class_path": f"{__name__}.ToyModule", "init_args": {"musicgen": tiny_profile_cfg.musicgen}},
        "data": {"cache_dir": str(cache), "batch_size": 2, "num_workers": 0, "crop_seconds": 2.0},
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2, "limit_val_batches": 0, "logger": False,
                    "enable_checkpointing": False, "enable_progress_bar": False, "default_root_dir": str(run),
                    "callbacks": [{"class_path": "expotion.solvers.callbacks.MethodExport"}]},
    }))
    assert cli_main(["train", "fit", "--config", str(config)]) == 0
    export = run / TOY.export_name
    payload = read_adaptor(export)
    assert payload["method"] == NAME and set(payload["features"]["shapes"]) == {STREAM}
    state = payload["state_dict"]
    untrained = MotionMemory(state["proj.weight"].shape[1], state["proj.weight"].shape[0], 2.0).state_dict()
    assert set(state) == {"proj.weight", "proj.bias"}
    assert all(torch.isfinite(v).all() for v in state.values())
    assert not torch.equal(state["proj.weight"], untrained["proj.weight"])  # two steps moved the projection
    assert not torch.equal(state["proj.bias"], untrained["proj.bias"])

    zeroed = tmp_path / "zeroed.pt"
    torch.save({**payload, "state_dict": {k: torch.zeros_like(v) for k, v in state.items()}}, zeroed)
    split = cache / "val"
    sampling = ["--seed", str(SEED), "--top-k", "50"]
    assert cli_main(["generate", "--cache", str(split), "--checkpoint", str(export), "--out-dir", str(tmp_path / "toy"),
                     "--reference-dir", str(tmp_path / "reference"), *sampling, *models]) == 0
    assert cli_main(["generate", "--cache", str(split), "--checkpoint", str(zeroed), "--out-dir",
                     str(tmp_path / "zeroed"), *sampling, *models]) == 0
    assert cli_main(["generate", "--cache", str(split), "--musicgen", tiny_profile_cfg.musicgen, "--out-dir",
                     str(tmp_path / "plain"), *sampling, *models]) == 0
    clip_ids = [clip.clip_id for clip in read_clips(split)]
    toy, zero, plain = (generated(tmp_path / name) for name in ("toy", "zeroed", "plain"))
    assert list(toy) == list(zero) == list(plain) == clip_ids and len(clip_ids) == 2
    assert zero == plain  # a zero projection adds nothing: plain MusicGen, token for token
    assert all(toy[i] != plain[i] for i in clip_ids)  # the video reaches the music

    # the same, on the tokens themselves, through the library: one clip, one seed
    loaded = load_models(ModelSettings(checkpoint=export, device="cpu"))
    clip = read_clips(split, (STREAM,))[0]
    feats = {name: value[None] for name, value in clip.features((STREAM,)).items()}
    tokens = {name: generate_tokens(loaded.musicgen, [clip.caption], clip.duration_s, conditioning, feats,
                                    loaded.rates, seed=SEED, top_k=50)
              for name, conditioning in (("toy", loaded.conditioning), ("plain", None))}
    with torch.no_grad():
        loaded.conditioning.proj.weight.zero_()
        loaded.conditioning.proj.bias.zero_()
    tokens["zeroed"] = generate_tokens(loaded.musicgen, [clip.caption], clip.duration_s, loaded.conditioning, feats,
                                       loaded.rates, seed=SEED, top_k=50)
    assert torch.equal(tokens["zeroed"], tokens["plain"]) and not torch.equal(tokens["toy"], tokens["plain"])

    results = tmp_path / "results"
    assert cli_main(["eval", "--generated", str(tmp_path / "toy"), "--reference", str(tmp_path / "reference"),
                     "--cache", str(split), "--metrics", "chroma,video_music", "--out", str(results),
                     "--cache-dir", str(tmp_path / "eval-cache"), "--weights-dir", tiny_dir]) == 0
    metrics = json.loads((results / "metrics.json").read_text())
    assert metrics["inputs"]["clip_ids"] == clip_ids and metrics["inputs"]["n_video_spans"] == 2  # spans from the cache
    for name in ("chroma", "av_align"):  # the music against its reference, and against the clip's video
        assert metrics["metrics"][name]["status"] == "ok" and metrics["metrics"][name]["n_clips"] == 2
