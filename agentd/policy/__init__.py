"""Policies: YAML with line marks -> strict typed model -> pure decisions."""
