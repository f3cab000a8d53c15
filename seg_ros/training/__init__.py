"""Training: paired image/label folders, augmentation, losses, the training loop and export."""
