"""Training-step time of the CLIP + flow method against the Expotion adaptor, on the same MusicGen.

One random MusicGen (built in the released format, loaded through
``MusicGen.get_pretrained``), one batch of codes and text, and features at the
released widths (MARLIN and Synchformer 768; CLIP ViT-B/32's 50 tokens x 768;
112 x 112 Farneback maps). Each step is forward, loss, backward and AdamW:

- Expotion: the adaptor with every layer adapted (L = N, the size configs), MusicGen frozen;
- CLIP + flow at the paper's conditioner size (4 + 4 layers, width 768, P = 8), with
  the decoder frozen (``none``), its cross-attention trained, or all of it trained.

Steps are interleaved over the repeats, so machine load affects every variant alike.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/clip_flow_train_step.py [--layers 16 --dim 256 --seconds 10]
"""
from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from common import CLIP_DIM, CLIP_TOKENS, FLOW_MAP, spread, trained_adaptor, training_setup  # noqa: E402

from expotion.core.rates import DEFAULT_RATES as R
from expotion.methods.clipflow.conditioner import ClipFlowConditioner, ClipFlowConfig
from expotion.methods.clipflow.memory import trained_decoder
from expotion.methods.clipflow.module import clip_flow_predictions
from expotion.methods.expotion.module import adapted_predictions
from expotion.musicgen.objective import codebook_cross_entropy


def expotion_variant(mg, seconds: float, device: str):
    adaptor = trained_adaptor(mg.lm, len(mg.lm.transformer.layers), seconds, device)
    rates = {"marlin": R.marlin, "synchformer": R.synchformer}

    def predict(batch):
        return adapted_predictions(mg.lm, adaptor, {n: batch[n] for n in rates}, rates, batch)

    return predict, [p for p in adaptor.parameters() if p.requires_grad]


def clip_flow_variant(mg, seconds: float, decoder: str, device: str):
    cfg = ClipFlowConfig(decoder=decoder, max_seconds=seconds)
    conditioner = ClipFlowConditioner(cfg, {"clip": (CLIP_TOKENS, CLIP_DIM), "farneback": FLOW_MAP}, mg.lm.dim,
                                      mg.frame_rate).to(device)
    rates = {"clip": R.clip, "farneback": R.farneback}
    decoder_params = list(trained_decoder(mg.lm, decoder, cfg.text).values())

    def predict(batch):
        for p in mg.lm.parameters():  # variants share one MusicGen: only this variant's decoder part trains
            p.requires_grad_(False)
        for p in decoder_params:
            p.requires_grad_(True)
        return clip_flow_predictions(mg.lm, conditioner, {n: batch[n] for n in rates}, rates, batch)

    return predict, [*conditioner.parameters(), *decoder_params]


def timed_step(predict, optimizer, batch) -> float:
    start = time.perf_counter()
    out = predict(batch)
    loss, _, _ = codebook_cross_entropy(out.logits, batch["codes"], out.mask)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    args, device, mg, batch = training_setup(__doc__, ("marlin", "synchformer", "clip", "farneback"))
    variants = {"expotion (L = N)": expotion_variant(mg, args.seconds, device)}
    variants |= {f"clip+flow, decoder {d}": clip_flow_variant(mg, args.seconds, d, device)
                 for d in ("none", "cross_attention", "all")}
    steps = {name: (predict, torch.optim.AdamW(params, lr=1e-5)) for name, (predict, params) in variants.items()}
    for predict, optimizer in steps.values():
        timed_step(predict, optimizer, batch)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, (predict, optimizer) in steps.items():
            for p in mg.lm.parameters():
                p.requires_grad_(False)
            times[name].append(timed_step(predict, optimizer, batch))
    base = statistics.median(times["expotion (L = N)"])
    print(f"MusicGen N={args.layers} layers, dim {args.dim}; batch {args.batch} x {args.seconds:g} s on {device}; "
          f"{args.repeats} interleaved repeats")
    for name, values in times.items():
        print(f"  {name:32s} step {spread(values)} s; {statistics.median(values) / base:.2f}x Expotion")


if __name__ == "__main__":
    main()
