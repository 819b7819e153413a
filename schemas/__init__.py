"""Schemas: the tf.Example feature definition (`features.py`) and the curated TFDV schema."""

from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent
