"""Datasets, their split views and attribute semantics."""
