"""Recommendations: the nearest tracks to one (similar), and the multi-seed, multi-model engine."""
