"""Objective evaluation of generated music (the paper's Table 1 and the chroma metric).

Stage 1 (:mod:`.embed`) turns every audio, video and caption into model outputs
held in a content-addressed cache; stage 2 (:mod:`.metrics`) computes the
metrics from that cache alone; :mod:`.report` writes them out.
"""
