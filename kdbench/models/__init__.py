"""Model zoo (placeholder until the zoo lands)."""
