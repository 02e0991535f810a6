"""Imputation: whole images (tiled, blended) and cells, from an exported model."""
