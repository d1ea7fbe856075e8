"""KD (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"): the baselines every other
paper compares with, the student trained without distillation and the KD student. No table of its
own; it gives their labels and places (first after the teacher) in every report."""
from __future__ import annotations

from ..report.data import METHOD_DISPLAY, MethodDisplay

METHOD_DISPLAY.add("student", MethodDisplay("Student (no KD)", 10))
METHOD_DISPLAY.add("kd", MethodDisplay("KD", 20))
