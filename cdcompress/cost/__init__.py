"""Cost and measurement: static counts (parameters, bytes, MACs), timed stylizations and memory, latency on each
runtime, and teacher-vs-student comparisons.
"""
