"""Pieces every stage shares: rates and lengths, devices, atomic files, output paths, weights."""
