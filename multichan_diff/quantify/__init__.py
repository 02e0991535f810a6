"""From imputed pixels to the per-cell table biologists analyse: cell masks (given, or a
rough nuclear segmentation) and per-cell means of every channel."""
