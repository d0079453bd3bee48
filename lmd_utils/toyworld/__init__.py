"""Toy world: synthetic shape scenes, an exact detector and a tiny pixel-space text-to-image model."""
