"""Network surgery on any encoder-decoder pair: module helpers, channel slimming (torch-pruning), linear-embedding
branches Q and the drop-in student.
"""
