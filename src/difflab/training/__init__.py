"""Training a denoiser: the loop, EMA and checkpoints."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message names the step and checkpoint.
    Defined here, beside nothing heavy, so that the command line catches it without torch."""
