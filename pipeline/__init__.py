"""Pipeline: the TFX pipeline definition and its local runner (uses data and components)."""
