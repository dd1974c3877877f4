"""De-identification: the PS3.15 profile (generated table), options, values, export, the one
withholding policy (withhold) that deid and ingest apply, and pixel-bit cleaning (pixels)."""
