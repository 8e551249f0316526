"""Conditioning methods, each a plug-in: what it reads, how it conditions MusicGen, its export."""
