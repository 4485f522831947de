"""Leaf package: typed settings and small shared types. Imports nothing of ours."""
