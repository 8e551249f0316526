"""Plain text-only MusicGen, the baseline row of the paper's tables: no video reaches the music.

It trains nothing and exports nothing; ``expotion generate`` without ``--checkpoint`` runs it.
"""
from expotion.methods.registry import Method, register_method

METHOD = register_method(Method("musicgen_text", "text-only MusicGen"))
