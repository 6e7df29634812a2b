"""``sparsebench report``: runs in MLflow -> paper-style tables, Pareto plots and seed statistics.

select.py finds the runs, aggregate.py does the statistics, tables.py and figures.py draw,
document.py and html.py write the pages, build.py puts it together, reproduce.py re-runs it.
The entry point is ``sparsebench.report.build.make_report``; this package imports nothing heavy
itself, so the statistics can be used without matplotlib or MLflow being loaded.
"""
