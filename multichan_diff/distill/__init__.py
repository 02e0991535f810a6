"""One-step generators distilled from a trained diffusion model (SiD)."""
