"""`imaging infer`: the batch inference pipeline, one job per module.

- :mod:`~imaging.pipelines.infer.run`: the command as a library call (model, input, shard,
  selection, push, the MLflow run): :func:`~imaging.pipelines.infer.run.run_inference`.
- :mod:`~imaging.pipelines.infer.inputs`: the dataset behind ``input=`` (a PACS export is
  ingested) and the series a shard takes.
- :mod:`~imaging.pipelines.infer.batch`: one shard's three stages on threads (prefetch, model,
  writing): :class:`~imaging.pipelines.infer.batch.BatchRunner`.
- :mod:`~imaging.pipelines.infer.writers`: the outputs of a series (NIfTI mask, DICOM SEG,
  overlay) in writer processes.
- :mod:`~imaging.pipelines.infer.resume`: done/errors/attempted markers and the merged report
  rebuilt from them.
- :mod:`~imaging.pipelines.infer.report`: ``report.csv``/``report.json`` rows.
- :mod:`~imaging.pipelines.infer.remote`: DICOMweb pull before, STOW-RS/C-STORE push after.

Drawing the overlay is :mod:`imaging.review.overlay` and opening a NIfTI is
:mod:`imaging.data.nifti`: both are used below the pipelines too.
"""
