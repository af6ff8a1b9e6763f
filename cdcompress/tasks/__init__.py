"""Domain tasks built on the distillation core: photo denoising (noisy/clean pairs, held-out pairs, a teacher
loop).
"""
