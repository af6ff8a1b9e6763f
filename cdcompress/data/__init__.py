"""Data and image I/O: image files to tensors and back (streamed by bands for canvases), and training batches from
any source.
"""
