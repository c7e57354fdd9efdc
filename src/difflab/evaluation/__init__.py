"""Scoring generated images: metrics, feature networks, `difflab eval`, run reports."""
