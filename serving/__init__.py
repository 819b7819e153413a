"""Serving: TF Serving model directory, config, and an embedded server with its REST contract."""
