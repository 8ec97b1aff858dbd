"""Honest personas: the traffic false positives come from."""
