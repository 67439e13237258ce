"""Thin Dagster layer: each asset wires inputs, calls geo_busyness.core, attaches metadata."""
