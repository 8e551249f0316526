"""Captioners: audio- and video-language models that write a text prompt for a clip (the paper's generated captions)."""
