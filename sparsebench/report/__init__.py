"""``sparsebench report``: runs in MLflow -> paper-style tables, Pareto plots and seed statistics.

select.py finds the runs; aggregate.py does the statistics (and says which points are degenerate);
tables.py builds the tables, formatting.py prints their numbers and writers.py writes them (Markdown,
LaTeX, CSV) to fit a page; figures.py draws, with frontier.py (error vs compression), mask_figures.py
and palette.py (theme, colours, legends); sections.py assembles one task's part, document.py and
html.py write the pages, manifest.py records what a report was made from, build.py puts it together
and reproduce.py re-runs it. The entry point is ``sparsebench.report.build.make_report``; this
package imports nothing heavy itself, so the statistics can be used without matplotlib or MLflow
being loaded.
"""
