"""``python -m expotion.train fit ...``: the training command, the same as ``expotion train fit ...``."""
import sys

from expotion.cli.train import run

if __name__ == "__main__":
    sys.exit(run())
