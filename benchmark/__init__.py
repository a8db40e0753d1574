"""MSKD-Bench: multi-step knowledge distillation (teacher > TA > student) with a faithful MiniLLM trainer.

Data flows one way: data (`benchmark.data`, `benchmark.synthetic`) -> registry and plan (`benchmark.registry`,
`benchmark.plan`) -> stages (`benchmark.sft`, `benchmark.minillm` on `benchmark.engine`) -> evaluation
(`benchmark.evaluate`) -> results store (`benchmark.results`) -> notebooks/ -> paper_tables/.
"""

__version__ = "0.1.0"


class BenchmarkError(Exception):
    """A user-facing error: the message names what is wrong (entry, file, line) and what to do."""
