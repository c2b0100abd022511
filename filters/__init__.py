"""Document filters: each scores a document (pure, numbers stored on the record) and a separate
keep decision applies thresholds, returning None (keep) or a drop reason ``family.metric``."""
