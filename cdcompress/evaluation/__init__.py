"""Quality: PSNR/SSIM, Gram statistics, reconstruction and style evaluation with their settings, and a decoder's
least-squares ceiling.
"""
