"""Compress to a budget: the cost target (torch-free, shared with the recipe schema) and the search for the widths
that meet it.
"""
