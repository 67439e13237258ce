"""Pure logic on DataFrames: no Dagster import anywhere in this package."""
