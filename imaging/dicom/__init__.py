"""DICOM: scan, group, assemble, de-identify, SEG. Never imports torch or mlflow."""
