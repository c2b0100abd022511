"""Web data for the ``web`` stage: readers (WARC/WET/ARC/HTML/JSONL/parquet/HF), HTML
extraction, and the funnel that accounts for every record read."""
