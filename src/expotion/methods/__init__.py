"""Conditioning methods, each a plug-in: what it reads, how it conditions MusicGen, its training and export.

Importing this package registers the built-in methods and those of installed plug-ins (modules listed under
the ``expotion.methods`` entry-point group); the stages then look them up in :mod:`expotion.methods.registry`.
"""
from importlib.metadata import entry_points

from expotion.methods import clipflow, expotion, musicgen_text  # noqa: F401  (each registers itself)

for plugin in entry_points(group="expotion.methods"):
    plugin.load()
