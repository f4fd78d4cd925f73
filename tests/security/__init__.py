"""The escape suite of issue 15: one module per area, one test (or table row) per finding."""
