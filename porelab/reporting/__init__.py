"""Tables and figures of cross-validation results (the paper's Tables 3-8, PR/ROC plots), as plain text and
PNG files; the AutoML pipeline logs them."""
