"""Flower-free maths core: models, data, training loops, metering (torch and numpy only)."""
