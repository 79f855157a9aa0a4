"""Which CrowS-Pairs data version a result was computed on, named in every CrowS result and report.

Published lm-evaluation-harness figures for ``crows_pairs_english`` (0.4.13) come from its hub set
``jannalu/crows_pairs_multilingual`` (english), the revised multilingual English set of about 1.68k
rows; our figures come from a local CSV, by default the original 1,508-pair nyu-mll release. The
two are different data: a figure is only comparable with one computed on the same version.
"""

from __future__ import annotations

# sha256 of the CSV files we know, -> their name.
KNOWN_CSV = {
    "dfb36986ce0502abbaf7055b9176da3d08d48e07df1251991b5dfbcbceab9d0c":
        "original 1,508-pair release (nyu-mll/crows-pairs crows_pairs_anonymized.csv)",
    "b9d6b4a77135ee0376cc76037397616a75293b9af7eb5286a98a059d22693162":
        "revised 1,467-pair set (kinit-sk/bias-methodology)",
}
LM_EVAL_HUB = ("lm-eval hub set jannalu/crows_pairs_multilingual (english): the revised multilingual English "
               "set (about 1.68k rows), not the original 1,508-pair release")


def csv_version(sha256: str | None, n_pairs: int | None = None) -> str:
    """The name of a CrowS-Pairs CSV from its checksum (unknown files are named by size and checksum)."""
    if sha256 in KNOWN_CSV:
        return KNOWN_CSV[sha256]
    size = f"{n_pairs} pairs, " if n_pairs is not None else ""
    return f"unrecognised CrowS-Pairs CSV ({size}sha256 {str(sha256)[:12]})"
