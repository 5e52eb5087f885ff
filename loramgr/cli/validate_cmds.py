"""validate and weight-list commands (filled in by the validation module)."""
