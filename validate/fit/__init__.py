"""validate/fit."""
