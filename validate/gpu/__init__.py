"""validate/gpu."""
