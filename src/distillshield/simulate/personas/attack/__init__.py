"""Attack personas: distillation campaigns."""
