"""Catalog -> MONAI datasets: items, subject splits, transforms, caching."""
