"""The embedded default job (``cdcompress demo``, ``make demo``): show the product on the paper's own teacher.

The real WCT VGG-19 teacher and its trained decoders are used whenever they can be found (an explicit
folder, ``$CDCOMPRESS_WCT_VGG19``, or the weights cache that ``cdcompress weights download wct-vgg19``
fills). Without them (a fresh clone, offline) the demo still has to show something real, so it falls
back to a stand-in teacher it can build itself: a VGG-19 with scale-preserving random weights whose
decoders are trained in stage 1 (``demo_offline``), and it says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..models.bundled import BUNDLED_TEACHERS
from ..models.weights import WCT_HINT, locate_wct
from .recipe import Recipe, load_recipe

REAL_TEACHER_RECIPE = "demo"
OFFLINE_RECIPE = "demo_offline"
OFFLINE_TEACHER = "offline-vgg19"  # the bundled teacher demo_offline names


@dataclass
class DemoChoice:
    recipe: Recipe
    teacher: Path | None  # None: the bundled offline teacher
    note: str


def choose_demo(teacher: str | Path | None = None, offline: bool = False, overrides: Sequence[str] = ()) -> DemoChoice:
    """The real-teacher demo recipe when the WCT teacher is found (``teacher`` first), else the offline one."""
    where = None if offline else locate_wct(teacher)
    if where is None:
        why = "--offline was given" if offline else f"the paper's WCT VGG-19 teacher was not found ({WCT_HINT})"
        note = (f"{why}: teacher: the bundled offline teacher ({BUNDLED_TEACHERS[OFFLINE_TEACHER]}); its numbers "
                "describe that teacher, not the paper's networks")
        return DemoChoice(load_recipe(OFFLINE_RECIPE, list(overrides)), None, note)
    recipe = load_recipe(REAL_TEACHER_RECIPE, [f"teacher.path={where}", *overrides])
    return DemoChoice(recipe, where, f"teacher: the paper's WCT VGG-19 encoder and trained decoders from {where}")
