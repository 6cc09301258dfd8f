"""Experiments: a grid file -> align / finetune / evaluate stages -> cached, resumable runs -> report.

- `experiment.py`: the typed experiment file, its expansion into stages, the plan and the runner;
- `validate.py`: `safeft validate` for experiment and single-stage files;
- `report.py`: results and system tables (Markdown + CSV) and plots of a runs folder;
- `quickstart.py` / `demo_data.py`: the small end-to-end experiment of `safeft quickstart`.
"""
