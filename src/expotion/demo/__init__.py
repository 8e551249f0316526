"""Offline synthetic demo dataset whose video and music share beat and chord structure."""
