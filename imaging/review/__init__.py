"""Review helpers for the notebooks: loading outputs and drawing readable figures.

The notebooks in ``notebooks/`` stay short and call these functions, so the
logic is tested code. Every figure is a :class:`matplotlib.figure.Figure`
(no pyplot state: safe headless and in tests) with labelled axes and units.

- :mod:`imaging.review.paths`: default locations (the ``make demo`` outputs).
- :mod:`imaging.review.dataset`: catalog tables, volume loading, intensity sampling.
- :mod:`imaging.review.plots`: orthogonal views with label overlays, histograms.
- :mod:`imaging.review.runs`: MLflow runs compared: curves, Dice, config diff.
- :mod:`imaging.review.predictions`: inference report, volumes, best/worst cases.
- :mod:`imaging.review.seg_check`: a DICOM SEG checked against its source series.
- :mod:`imaging.review.overlay`: the mask-over-slices PNG (Pillow, no matplotlib) of inference
  outputs and study previews.
- :mod:`imaging.review.notebook`: strip outputs, inject papermill-style parameters.
"""
