"""safeft: defend LLMs against harmful fine-tuning.

Align a model with a defense, attack it with a poisoned fine-tuning mix, evaluate harmful score and
task accuracy, and report — one package, one CLI, on the Hugging Face stack.
"""

__version__ = "0.1.0"
