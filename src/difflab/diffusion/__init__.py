"""The generative half: forward process, denoiser contract, loss, samplers, guidance,
likelihood and the one generation path."""
