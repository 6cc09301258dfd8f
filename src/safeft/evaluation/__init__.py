"""Evaluation: batched greedy generation, harmfulness judges, and the metrics built on them.

- `generate.generate_answers`: batched greedy decoding (left padding, KV cache), original order kept.
- `judges.get_judge(name)`: `keyword`, `beaver-dam` (the reference judge, needs a GPU) and `cpu`
  (the default: a MiniLM classifier shipped in `safeft/assets/cpu_judge`, trained by `cpu_judge`).
- `metrics`: harmful score (HS), HS+ (incoherent answers count as harmful), refusal rate, FA.
- `evaluate.evaluate_model`: all of the above for one model, as an `EvaluationResult` (`result.py`)
  plus per-sample rows.

Nothing here loads weights at import time.
"""
