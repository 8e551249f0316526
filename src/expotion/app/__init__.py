"""The browser app (``expotion app``): a Generate tab and, with ``--study``, a listening-study tab."""
