"""Study storage -> the paper's tables (Markdown, LaTeX, CSV, HTML) and plots (PNG).

``results`` reads the storage in one pass, ``tables`` and ``summaries`` arrange the numbers,
``render``/``page`` format them, ``plots`` draws, ``outside`` adds results from CSV files, and
``report`` writes it all under ``<output_dir>/<sweep>/results``.
"""

from tunevlseg.collect.report import Report, collector_job, write_reports, write_sweep_reports
from tunevlseg.collect.results import StudyData, StudyResult, collect_studies, study_results

__all__ = [
    "Report",
    "StudyData",
    "StudyResult",
    "collect_studies",
    "collector_job",
    "study_results",
    "write_reports",
    "write_sweep_reports",
]
