"""Expotion (ISMIR 2025): the visual embedding and the prefix adaptor of §3."""
