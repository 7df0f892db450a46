"""Stage 3: measure the base and the released model (``phase``), and turn a run's MLflow
records into a report (``collect`` reads, ``render`` writes HTML, Markdown or JSON)."""
