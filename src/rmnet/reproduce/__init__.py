"""``rmnet reproduce``: every result table of the paper (Tables 3–11) from one command.

plan.py      every run as data (an ``rmnet train`` argument list), and the rows that read them
paper.py     the paper's published numbers, cell by cell
estimate.py  GPU time and memory per run, from the H200 measurements of 2026-12-04
job.py       one run: train / resume / skip, then evaluate
runner.py    the local GPUs (packed by memory), one at a time on a CPU, or SLURM via submitit
tables.py    OUT/tableN.md (ours beside the paper's) and OUT/runs.csv
grid.py      the command: plan, run what is not finished, write the tables
"""

from rmnet.reproduce.grid import reproduce

__all__ = ["reproduce"]
