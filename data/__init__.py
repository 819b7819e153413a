"""Data layer: find, validate and convert GeoTIFF image/mask pairs to TFRecords; read them back.

Bottom of the stack (data -> components -> pipeline -> serving): imports nothing from above.
"""
