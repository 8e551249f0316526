"""Training: the LightningModule every method subclasses, its optimizer and schedule, callbacks and exported files."""
