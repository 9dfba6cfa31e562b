"""One composite PTransform per pipeline stage; array and geometry math in plain functions."""
