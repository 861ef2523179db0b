"""Pages made at build time (mkdocs-gen-files): one page per file in ``benchmarks/results/``,
the notebooks with their figures, so the site always shows what the scripts last wrote."""

from __future__ import annotations

import json
import pathlib

import mkdocs_gen_files

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
NOTEBOOKS = ROOT / "notebooks"

# Which script writes each result file, so every page says how to rerun it.
WRITERS = {
    "rnn": "python -m benchmarks.rnn",
    "rnn_gpu": "bash benchmarks/gpu.sh",
    "memory": "python -m benchmarks.memory",
    "memory_gpu": "bash benchmarks/gpu.sh",
    "parallel": "python -m benchmarks.parallel",
    "learning": "python -m benchmarks.learning",
    "compile_time_cpu": "python -m benchmarks.compile_time",
    "compile_time_gpu": "python -m benchmarks.compile_time (on a GPU)",
    "data_parallel": "python -m benchmarks.data_parallel",
    "data_parallel_cpu": "python -m benchmarks.data_parallel --real",
    "native_tails": "python -m benchmarks.native_tails",
    "native_tails_idle20ms": "python -m benchmarks.native_tails --idle-ms 20",
    "page_faults": "python -m benchmarks.page_faults",
    "streaming": "python -m benchmarks.streaming",
    "own_data": "python -m benchmarks.own_data",
}


def result_pages() -> list[tuple[str, str]]:
    pages = []
    for path in sorted(RESULTS.glob("*.md")):
        name = path.stem
        writer = WRITERS.get(name, "the benchmark of the same name")
        body = path.read_text()
        image = RESULTS / f"{name}.png"
        with mkdocs_gen_files.open(f"results/{name}.md", "w") as page:
            page.write(f"# {name}\n\n")
            page.write(
                f"Written by `{writer}` into `benchmarks/results/{name}.md`; shown as it is.\n\n"
            )
            if image.exists():
                with mkdocs_gen_files.open(f"results/{name}.png", "wb") as copy:
                    copy.write(image.read_bytes())
                page.write(f"![{name}]({name}.png)\n\n")
            page.write(body)
        pages.append((name, writer))
    return pages


def notebook_pages() -> None:
    figures = sorted((NOTEBOOKS / "figures").glob("*.png"))
    for figure in figures:
        with mkdocs_gen_files.open(f"notebooks/figures/{figure.name}", "wb") as copy:
            copy.write(figure.read_bytes())
    with mkdocs_gen_files.open("notebooks/index.md", "w") as index:
        index.write(
            "# Notebooks\n\nResearch notebooks in `notebooks/`, each a study with its own figures. "
            "They are committed without outputs; each runs in seconds with `SMOKE=1` (the test "
            "suite runs them all that way) and in under ten minutes on 2 CPU cores in full, which "
            "is what drew the figures below.\n\n"
        )
        for path in sorted(NOTEBOOKS.glob("*.ipynb")):
            with mkdocs_gen_files.open(f"notebooks/{path.name}", "w") as copy:
                copy.write(path.read_text())
            cells = json.loads(path.read_text())["cells"]
            title = next((line.lstrip("# ").strip() for cell in cells
                          if cell["cell_type"] == "markdown"
                          for line in "".join(cell["source"]).splitlines()
                          if line.startswith("# ")), path.stem)  # fmt: skip
            index.write(f"## [{title}]({path.name})\n\n")
            for figure in figures:
                if figure.name.startswith(path.stem[:3]):
                    index.write(f"![{figure.stem}](figures/{figure.name})\n\n")


pages = result_pages()
with mkdocs_gen_files.open("results/index.md", "w") as index:
    index.write(
        "# Benchmark files\n\nEvery file in `benchmarks/results/`, as its script last wrote "
        "it. Rerun the command to refresh one.\n\n| file | written by |\n|---|---|\n"
    )
    for name, writer in pages:
        index.write(f"| [{name}]({name}.md) | `{writer}` |\n")
notebook_pages()
