"""Planning before submitting: hardware tables, memory and cost model, layout search, claims check."""
