"""What a reader of finished runs sees: comparison tables and plots, the HTML report's
figures, the run summary, label-map pictures, and ``wsss inspect``'s view of a file."""
