"""The paper's released checkpoint names, torch-free: the CLI's ``convert --variant`` choices and the converter
share them without importing torch or each other."""

from __future__ import annotations

#: The paper's released file names per variant: (encoder pattern, decoder pattern) (``convert --from cd-release``).
RELEASE_VARIANTS: dict[str, tuple[str, str]] = {
    "student": ("se{k}.pth", "sd{k}.pth"),
    "base": ("e{k}_base.pth", "d{k}_base.pth"),
}
