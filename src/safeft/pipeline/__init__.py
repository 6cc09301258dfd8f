"""Experiments: a grid file -> align / finetune / evaluate stages -> cached, resumable runs -> report.

- `experiment.py`: the typed experiment file, its expansion into stages, the plan and the runner;
- `validate.py`: `safeft validate` for experiment and single-stage files;
- `report/`: results and system tables (Markdown + CSV) and plots of a runs folder, one module per
  table (see its `__init__`);
- `paired.py`: prompt-by-prompt comparison of two evaluations (exact McNemar), `safeft compare`;
- `quickstart.py` / `demo_data.py`: the small end-to-end experiment of `safeft quickstart`.
"""
