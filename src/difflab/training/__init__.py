"""Training a denoiser: the loop, EMA and checkpoints."""
