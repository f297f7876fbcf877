"""One-off tools run outside the product (never imported by engine/, bridge/, export/ or presets/):
the musicnn weight conversion and its golden values, which need TensorFlow in a separate venv."""
