"""FT (Kim et al. 2018, "Paraphrasing Complex Network: Network Compression via Factor Transfer"):
its label and place in the report. No paper table is compared yet (kdbench/reference/ft_reference.csv
holds published CIFAR-100 numbers from RepDistiller's README, which no comparison reads)."""
from __future__ import annotations

from ..report.data import METHOD_DISPLAY, MethodDisplay

METHOD_DISPLAY.add("ft", MethodDisplay("FT", 50))
