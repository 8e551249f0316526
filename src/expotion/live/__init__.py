"""Live generation: music that follows a camera (or a file played as one) while it runs.

:class:`~expotion.live.session.LiveSession` drives offline generation step by step as the video arrives, so its
tokens are offline's; it writes a growing wav and a latency log (:mod:`expotion.live.outputs`).
"""
