"""Datasets that ship inside installed packages and load offline (images for the main job)."""
