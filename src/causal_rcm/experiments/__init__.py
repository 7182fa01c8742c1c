"""Experiments that compare recipes end to end (each writes JSON, a markdown table and a plot)."""
