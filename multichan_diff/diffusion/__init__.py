"""Pure diffusion functions: schedules, channel masking, losses, samplers."""
