"""The only place with per-backend code (gradients, compilation, devices)."""
