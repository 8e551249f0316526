"""P2: training-step time and activation memory with L = N/4 adapted layers against L = N.

Both runs use the same random MusicGen (built in the released format, then
loaded through ``MusicGen.get_pretrained``), the same batch and features.
Memory is the size of the tensors autograd saves for the backward pass (the
part that grows with L); on a GPU the CUDA peak is printed as well.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/train_step.py [--layers 16 --dim 256 --seconds 10]
"""
from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from common import trained_adaptor, training_setup  # noqa: E402

from expotion.core.rates import DEFAULT_RATES as R
from expotion.methods.expotion.module import adapted_predictions
from expotion.musicgen.objective import codebook_cross_entropy


def step(lm, adaptor, optimizer, batch) -> int:
    """One training step; returns the bytes autograd saved for backward."""
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    rates = {"marlin": R.marlin, "synchformer": R.synchformer}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = adapted_predictions(lm, adaptor, {name: batch[name] for name in rates}, rates, batch)
        loss, _, _ = codebook_cross_entropy(out.logits, batch["codes"], out.mask)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return saved


def build(mg, n_adapted: int, seconds: float, device: str):
    adaptor = trained_adaptor(mg.lm, n_adapted, seconds, device)
    return adaptor, torch.optim.AdamW(adaptor.parameters(), lr=1e-3)


def timed_step(lm, adaptor, optimizer, batch) -> tuple[float, int]:
    start = time.perf_counter()
    saved = step(lm, adaptor, optimizer, batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, saved


def cuda_peak(lm, adaptor, optimizer, batch) -> int:
    if not torch.cuda.is_available():
        return 0
    torch.cuda.reset_peak_memory_stats()
    step(lm, adaptor, optimizer, batch)
    return torch.cuda.max_memory_allocated()


def main() -> None:
    args, device, mg, batch = training_setup(__doc__, ("marlin", "synchformer"))
    quarter, full = max(1, args.layers // 4), args.layers
    runs = {n: build(mg, n, args.seconds, device) for n in (quarter, full)}
    times: dict[int, list[float]] = {quarter: [], full: []}
    saved: dict[int, int] = {}
    for adaptor, optimizer in runs.values():
        step(mg.lm, adaptor, optimizer, batch)  # warm-up
    for _ in range(args.repeats):  # interleaved, so load on the machine affects both alike
        for n, (adaptor, optimizer) in runs.items():
            seconds, saved[n] = timed_step(mg.lm, adaptor, optimizer, batch)
            times[n].append(seconds)
    t_q, t_f = statistics.median(times[quarter]), statistics.median(times[full])
    m_q, m_f = saved[quarter], saved[full]
    p_q, p_f = (cuda_peak(mg.lm, *runs[n], batch) for n in (quarter, full))
    print(f"MusicGen N={args.layers} layers, dim {args.dim}; batch {args.batch} x {args.seconds:g} s on {device}")
    print(f"  L = N/4 = {quarter:2d}: step {t_q:.3f} s, saved activations {m_q / 2**20:.1f} MiB")
    print(f"  L = N   = {full:2d}: step {t_f:.3f} s, saved activations {m_f / 2**20:.1f} MiB")
    print(f"  ratio L=N/4 vs L=N: time {t_q / t_f:.2f}x, activation memory {m_q / m_f:.2f}x (goal <= 0.5x)")
    if p_f:
        print(f"  CUDA peak: {p_q / 2**20:.0f} MiB vs {p_f / 2**20:.0f} MiB ({p_q / p_f:.2f}x)")


if __name__ == "__main__":
    main()
