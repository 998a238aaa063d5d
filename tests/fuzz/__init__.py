"""Coverage-guided fuzzing (atheris) of the parsers that meet the wire: ``make fuzz``."""
