"""Pipeline stages: one module per stage, each a small Beam PTransform over plain functions."""
