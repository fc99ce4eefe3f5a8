"""Helpers of bench/gpu.py: the offline kit, the random SD1.5 checkpoint, the measurement."""
