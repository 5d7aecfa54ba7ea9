"""Segment everything on images larger than the model's input, tile by tile with a halo.

Work in progress: tile layout, per-tile segmentation and stitching of the records.
"""
