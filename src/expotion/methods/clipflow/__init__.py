"""The second method: CLIP + Farneback flow fused by cross-attention, as the memory of MusicGen's cross-attention.

It implements Merrill & Spielvogel, "Video-to-Music Generation" (§3, §5.1) in
the same pipeline as Expotion: the same feature cache (streams ``clip`` and
``farneback``), DataModule, loss, logging, checkpoints, ``generate`` and ``eval``.

- :mod:`.conditioner`: §3.1 visual embeddings, §3.2 motion embeddings,
  §3.3 cross-attention fusion, §3.4 projection to the decoder's width;
- :mod:`.memory`: the projected tokens as the memory of MusicGen's own
  cross-attention, through its condition-tensor path;
- :mod:`.module`: the LightningModule; :mod:`.checkpoint`: its export; :mod:`.statistics`: the features'
  normalisation statistics in one streaming pass.
"""
from expotion.methods.clipflow.checkpoint import METHOD, build_clip_flow
from expotion.methods.registry import Method, register_method

register_method(Method(METHOD, "CLIP + flow", module="expotion.methods.clipflow.module.ClipFlowModule",
                       export_name="clip_flow.pt", weight_prefix="conditioner.", load=build_clip_flow))
