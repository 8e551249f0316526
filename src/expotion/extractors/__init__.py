"""Pretrained feature extractors that turn video into the conditioning streams of §3.1."""
