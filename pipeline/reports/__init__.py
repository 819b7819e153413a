"""Reports on pipeline runs and data: `tailings stats` and `tailings report`.

TFDV's own HTML loads Facets from the internet (blank offline) and shows image bytes as text;
these reports read the same TFDV protos and ML Metadata records and render terminal tables and
self-contained HTML pages (inline CSS and PNG, no network request).
"""
