"""Silence the warnings our dependencies print on every run although nothing is wrong.

Each filter names one known message and why it is harmless here. Everything
else still reaches the user. The command-line entry points call
:func:`silence_known_warnings` before they import the libraries; a library user
(a notebook, the web app) keeps the default behaviour unless it calls it too.
"""
from __future__ import annotations

import logging
import re
import warnings

# (category, message regex, why it is harmless)
WARNING_FILTERS = (
    (FutureWarning, r"`torch\.nn\.utils\.weight_norm` is deprecated",
     "audiocraft's EnCodec builds its convolutions with the old weight_norm; the weights load and run unchanged"),
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated",
     "Lightning's batch-size inference uses a torch pytree name that still works"),
    (UserWarning, r"LightningCLI's args parameter is intended to run from within Python",
     "`expotion train` hands LightningCLI exactly the arguments after `train`; the warning fires whenever the "
     "process's own command line is not empty"),
    (UserWarning, r"You're using the WeightAveraging callback with a model that overrides the configure_model",
     "the CLIP + flow module builds its conditioner in configure_model from the cache's shapes; it shards no layers "
     "(DDP keeps whole copies), which is what the warning is about"),
)

# logger name -> (message regex, why it is harmless)
LOG_FILTERS = {
    "xformers": (r"WARNING\[XFORMERS\]: (xFormers can't load C\+\+/CUDA extensions|Need to compile C\+\+ extensions)",
                 "audiocraft only needs xformers' Python names; its attention runs on torch's own kernels"),
    "lightning.pytorch.utilities.rank_zero": (r"💡 Tip: For seamless cloud",
                                              "an advertisement for a hosted logging service"),
}


class MessageFilter(logging.Filter):
    """Drop the records of one logger whose message matches ``pattern``."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def silence_known_warnings() -> None:
    """Install the filters above (idempotent)."""
    for category, message, _why in WARNING_FILTERS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, (pattern, _why) in LOG_FILTERS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, MessageFilter) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(MessageFilter(pattern))
