"""kdaudit: audit how much of a classifier's knowledge leaks to distillation attackers.

The `kdaudit` package holds the CLI; the engine (`kdaudit.distill`), architectures
(`kdaudit.models`), persistence (`kdaudit.store`), API (`kdaudit.service`) and workers
(`kdaudit.workers`) live in the repository's top-level folders and are mapped under this
namespace by pyproject.toml.
"""

__version__ = "0.1.0"
