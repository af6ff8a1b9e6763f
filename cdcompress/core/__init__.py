"""The small core every layer stands on: errors, plug-in registries, lazy package attributes, atomic outputs,
devices, the allocator, progress and file digests. Imports nothing else from the package.
"""
