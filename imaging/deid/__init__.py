"""De-identification: the PS3.15 profile (generated table), options, values, export."""
