"""Denoiser networks (U-Net) and the feature networks used by the metrics."""
