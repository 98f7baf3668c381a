"""toyworld: the embedded testbed — the world's ground truth (``world``), its training renders
(``data``) and the score of a generated asset against the truth (``score``).

Imported by tools, benchmarks and tests only; never by the engine or the four architectural packages.
"""
