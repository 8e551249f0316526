"""Training: the LightningModule every method shares, its callbacks and exported files."""
