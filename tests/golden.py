"""Golden outputs of original implementations that cannot be installed from PyPI.

The test side (``tests/test_oracles.py``) and the generator below share
:func:`seeded_state`, so a fixture holds only seeds, small inputs and the
original's outputs; ``tests/data/README.md`` says how the fixtures were made.

    python tests/golden.py --torchvggish DIR --synchformer DIR

``DIR`` is a checkout of the original source, outside this repository; it is
only put on ``sys.path`` while the fixtures are written.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).parent / "data"
VGGISH_FIXTURE = DATA / "golden_vggish.npz"
MOTIONFORMER_FIXTURE = DATA / "golden_motionformer.npz"
MOTIONFORMER_SIZES = {"dim": 32, "depth": 2, "heads": 2}  # at the released 224 px, 16 px patches, 16 frames


def seeded_state(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Random weights that keep activations well scaled, drawn in sorted key order from one generator.

    Matrices and kernels get N(0, 1 / fan_in); vectors get N(0, 0.1²), plus one for normalisation scales.
    """
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        noise = torch.randn(shape, generator=g)
        if len(shape) >= 2:
            state[key] = noise / math.sqrt(math.prod(shape[1:]))
        else:
            is_scale = key.endswith("weight") and "norm" in key
            state[key] = noise * 0.1 + (1.0 if is_scale else 0.0)
    return state


def shapes_of(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def motionformer_input(seed: int) -> torch.Tensor:
    """(1, 1, 3, 16, 224, 224) in [-1, 1], the normalised range the extractor sees."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, 3, 16, 224, 224, generator=g) * 2 - 1


def write_vggish(source: Path, seed: int = 0) -> None:
    """torchvggish's feature code on a noise waveform, and its VGG (pre-ReLU embedding, as FAD uses) on the result."""
    sys.path.insert(0, str(source))
    from torchvggish import vggish, vggish_input

    waveform = np.random.default_rng(seed).uniform(-0.5, 0.5, 32000).astype(np.float32)  # 2 s at 16 kHz
    examples = vggish_input.waveform_to_examples(waveform.astype(np.float64), 16000, return_tensor=False)
    net = vggish.VGG(vggish.make_layers())
    net.embeddings = torch.nn.Sequential(*list(net.embeddings.children())[:-1])
    net.load_state_dict(seeded_state(shapes_of(net), seed), strict=True)
    with torch.no_grad():
        embeddings = net.eval()(torch.from_numpy(examples).float()[:, None])
    np.savez_compressed(VGGISH_FIXTURE, seed=seed, waveform=waveform, log_mel=examples.astype(np.float32),
                        embeddings=embeddings.numpy())


def write_motionformer(source: Path, seed: int = 0) -> None:
    """Synchformer's visual extractor as its training config builds it, at the small sizes above."""
    sys.path.insert(0, str(source))
    sys.path.insert(0, str(source / "model" / "modules" / "feat_extractors" / "visual"))
    from model.modules.feat_extractors.visual import motionformer as original

    load = original.OmegaConf.load

    def small(path):
        cfg = load(path)
        cfg.VIT.EMBED_DIM, cfg.VIT.DEPTH = MOTIONFORMER_SIZES["dim"], MOTIONFORMER_SIZES["depth"]
        cfg.VIT.NUM_HEADS = MOTIONFORMER_SIZES["heads"]
        return cfg

    original.OmegaConf.load = small
    net = original.MotionFormer(extract_features=True, factorize_space_time=True,
                                agg_space_module="TransformerEncoderLayer", agg_time_module="torch.nn.Identity",
                                add_global_repr=False).eval()
    original.OmegaConf.load = load
    net.load_state_dict(seeded_state(shapes_of(net), seed), strict=True)
    with torch.no_grad():
        features, _ = net(motionformer_input(seed + 1))
    np.savez_compressed(MOTIONFORMER_FIXTURE, seed=seed, input_seed=seed + 1, features=features.numpy(),
                        keys=np.array(sorted(shapes_of(net))))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torchvggish", type=Path, required=True, help="checkout of harritaylor/torchvggish")
    parser.add_argument("--synchformer", type=Path, required=True, help="checkout of v-iashin/Synchformer")
    args = parser.parse_args(argv)
    write_vggish(args.torchvggish.resolve())
    write_motionformer(args.synchformer.resolve())
    for path in (VGGISH_FIXTURE, MOTIONFORMER_FIXTURE):
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
