"""Configurable resources: where data lives and which city is served."""
